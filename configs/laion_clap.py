# python -m clap_jax.train --config configs/laion_clap.py:dirs=/data/tfr_a,dirs=/data/tfr_b,vocab=/models/roberta-base --workdir $WORKDIR
# variants: :fusion (feature fusion on)  |  :base (HTSAT-base)  |  :data=audiocaps_clotho|laion630k|audioset
#           :mlp_loss (laion's ClipLoss with mlp_loss=True)
#           :fsdp  |  :bf16  |  :remat  |  :batch_size=N  |  :epochs=N  |  :random (synthetic batches)
#           :tiny (the laion-clap-tiny model, 0.5 s clips, batch 16, random batches unless dirs=: CPU tests)
"""The LAION-CLAP recipe: HTSAT-tiny (or -base) + RoBERTa-base, 512-d joint space, two logit scales, 10 s clips
at 48 kHz, 77-token captions, feature fusion on or off.

Where each number comes from (the LAION-CLAP paper, Wu, Chen et al. 2023, section 4):
  * Adam with beta1 = 0.99, beta2 = 0.9, warm-up then cosine decay, base learning rate 1e-4: the paper.
  * batch size by training set: 768 (AudioCaps + Clotho), 2304 (with LAION-Audio-630K), 4608 (with AudioSet):
    the paper; `data=` picks one (default laion630k).
  * 45 epochs: the paper.
  * epoch length: OUR CHOICE of the sets' nominal sizes (AudioCaps + Clotho ~ 55k pairs, LAION-Audio-630K
    633,526, + AudioSet ~ 2.6M); set `epoch_examples=` to your data.
  * warm-up: OUR CHOICE, 3% of the steps (the paper gives no length).
  * 10 s, hop 480, window 1024, 64 mel bins, 77 tokens: the paper and laion_clap's model configs.
  * loss: laion_clap's ClipLoss without its optional MLP loss (one logit scale, logit_scale_a, for both
    directions; the transforms and logit_scale_t are kept and exported but not trained): `--clap-mlploss` is off
    by default in laion_clap's training script and its published training commands do not set it. `:mlp_loss`
    trains with it (`loss.mlp`: both logit scales, audio_transform and text_transform; clap_jax.train.laion).
  * per-tower settings (`optim.towers`): audio_branch, text_branch, audio_projection, text_projection,
    audio_transform, text_transform, logit_scale_a, logit_scale_t (laion's `--freeze-text` is
    `optim.towers.text_branch.freeze=True`).
  * SpecAugment in training: laion_clap's HTSAT (2 time stripes <= 64 frames, 2 mel stripes <= 8 bins).

Feature fusion (`:fusion`): the data pipeline decodes each clip whole and makes laion_clap's fusion input from it
(`clap_jax.audio.fusion.laion_audio_input`: clips up to 10 s repeat-padded, their HTK log-mel as all four views;
longer clips the resized global view and three local crops, longer = True), the crop positions drawn from a
RandomState seeded by the pipeline (same seed, same views; a resume continues the sequence). Batches hold
(B, 4, 1001, 64) views and the (B,) flags: static shapes, one compiled step.

Captions are tokenized in the data workers with RoBERTa BPE from `vocab=` (a directory with vocab.json and
merges.txt, e.g. a HF roberta-base checkpoint directory); without it, `roberta-base` from the local Hugging Face
cache. `:random` trains on synthetic batches (no vocabulary needed).
"""
import ml_collections

from clap_jax.models import registry
from clap_jax.train.config import base, parse_args

BATCH = {"audiocaps_clotho": 768, "laion630k": 2304, "audioset": 4608}
EPOCH_EXAMPLES = {"audiocaps_clotho": 55_000, "laion630k": 633_526, "audioset": 2_600_000}
ARGS = dict(batch_size=0, dirs=(), random=False, data="laion630k", epoch_examples=0, epochs=45, fusion=False,
            base=False, fsdp=False, bf16=False, remat=False, tiny=False, steps=6, ckpt_every=2, vocab="",
            mlp_loss=False)
TOWERS = ("audio_branch", "text_branch", "audio_projection", "text_projection", "audio_transform",
          "text_transform", "logit_scale_a", "logit_scale_t")


def get_config(arg: str = ""):
    args = parse_args(arg, ARGS, "configs/laion_clap.py")
    if args["data"] not in BATCH:
        raise ValueError(f"configs/laion_clap.py: data={args['data']!r}: one of {', '.join(BATCH)}")
    c = base()
    fused = "-fusion" if args["fusion"] else ""
    if args["tiny"]:
        c.model = registry.model_config("laion-clap-tiny" + fused)
    else:
        c.model = registry.model_config(("laion-htsat-base" if args["base"] else "laion-htsat-tiny") + fused)
    c.batch_size = args["batch_size"] or BATCH[args["data"]]
    c.data.kind = "tfrecord"
    c.data.dirs = args["dirs"]
    c.data.tokenizer = args["vocab"] or None
    if args["random"] or (args["tiny"] and not args["dirs"]):
        c.data.kind = "random"
    steps_per_epoch = max(1, (args["epoch_examples"] or EPOCH_EXAMPLES[args["data"]]) // c.batch_size)
    c.total_steps = args["epochs"] * steps_per_epoch
    c.optim.name = "adam"
    c.optim.lr = 1e-4
    c.optim.b1 = 0.99
    c.optim.b2 = 0.9
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = max(1, int(0.03 * c.total_steps))
    if args["fsdp"]:
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.sharding.rules = [(".*", "fsdp")]
    if args["bf16"]:
        c.model.dtype = "bfloat16"
    if args["remat"]:
        c.model.remat = True
    c.loss.kind = "sharded"
    c.loss.mlp = args["mlp_loss"]
    if args["mlp_loss"]:
        c.loss.kind = "global"   # the MLP loss is computed over the global batch
    c.optim.towers = ml_collections.ConfigDict(
        {t: ml_collections.ConfigDict({"lr_mult": 1.0, "freeze": False}) for t in TOWERS})
    c.ckpt.every_steps = 1000
    c.log.every_steps = 50
    if args["tiny"]:   # CPU tests: every code path in seconds
        c.model.audio.duration = 0.5
        c.batch_size = args["batch_size"] or 16
        c.total_steps = args["steps"]
        c.data.num_workers = 0
        c.optim.schedule = "constant"
        c.optim.warmup_steps = 0
        c.loss.kind = "global"
        c.sharding.fsdp_min_size = 0
        c.ckpt.every_steps = args["ckpt_every"]
        c.ckpt.keep = 10
        c.log.every_steps = 1
    return c
