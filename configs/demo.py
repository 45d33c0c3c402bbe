# bash scripts/main.sh   (builds the data, then runs:)
# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m clap_jax.train \
#     --config configs/demo.py:dirs=runs/demo/data/tfrecords --workdir runs/demo/train
# variants: :steps=300 | :batch=32 | :spec=256 | :lr=1e-3 | :random (old tone/caption pairs, no data needed) | :dirs=A:B (several TFRecord dirs)
"""The README's main job: a small CLAP on 8 simulated CPU devices (4 data x 2 FSDP mesh, row-sharded loss) trained
on the built-in synthetic dataset (`clap_jax.data.synthetic`: 8 sound classes x pitch x loudness x rhythm, templated
captions), read by the real Grain pipeline from its TFRecords ('train' split only; the 'eval' clips are never seen).

Sizes were chosen for 2 CPU cores. HTSAT's cost is set by its spectrogram image, not by the clip length: a 128x128
image (32 mel bins x 512 frames at 16 kHz, n_fft 512) has 4x fewer tokens than msclap's 256x256 and runs ~2x faster,
which buys batch 64 (more negatives per step). The audio tower is narrow (embed_dim 16, one block per stage); the text
tower is a 2-layer GPT-2 of width 64 (the 50257 x 64 token embedding is most of its 3.7M parameters).
`model.audio.duration` equals `data.clip_seconds` (2.5 s, the synthetic clip length): HTSAT stretches every clip's
spectrogram to the same image, so a model must be evaluated at the duration it was trained at
(`python -m clap_jax.eval --duration 2.5`, which main.sh passes).

Measured (2 shared CPU cores, bash scripts/main.sh on an installed machine; add 1-2 min for a fresh install): 700
steps (default): 9.0 min in all, training 8.4 min (compile ~40 s, ~1.4 steps/s); held-out zero-shot sound 8-way 66.8%
(chance 12.5%), pitch 82.8% (33.3%), rhythm 79.0% (50%), loudness 51.0% (50%); retrieval R@10 audio->text 68.8%,
text->audio 80.2% (2.5%). 500 steps: 7.6 min, loss 4.37 -> 1.60 (chance ln 64 = 4.16), sound 64.2%, pitch 69.2%,
rhythm 58.0%, retrieval R@10 55.5% / 68.6%. Compared at 500 steps: spec 256 / batch 32: 8.9 min, sound 66.5% but
pitch/loudness/rhythm at chance and retrieval R@10 24-29%; spec 128 / batch 32 / lr 3e-3: sound 62%.
Kill it and rerun the same command: it resumes from the newest checkpoint."""
from clap_jax.models import config as model_config
from clap_jax.train.config_base import base

CLIP_SECONDS = 2.5  # = clap_jax.data.synthetic's default --seconds
SAMPLE_RATE = 16000  # main.sh builds the data with --sample-rate 16000 (the pipeline requires the model's rate)


def get_config(arg: str = ""):
    args = dict(a.split("=", 1) if "=" in a else (a, "1") for a in (arg or "").split(",") if a)
    c = base()
    m = c.model = model_config.tiny()
    m.audio.embed_dim = int(args.get("audio_dim", 16))
    m.audio.depths = (1, 1, 1, 1)
    m.audio.num_heads = (1, 2, 4, 8)
    m.audio.drop_path_rate = 0.0
    m.audio.duration = CLIP_SECONDS
    m.audio.sample_rate = SAMPLE_RATE
    m.audio.n_fft, m.audio.hop_size = 512, 160
    m.audio.mel_sr, m.audio.fmin, m.audio.fmax = SAMPLE_RATE, 50.0, SAMPLE_RATE / 2
    spec = int(args.get("spec", 128))  # :spec=256 is msclap's image: 2x slower per step
    m.audio.spec_size, m.audio.mel_bins = spec, spec // 4
    m.text.n_embd = int(args.get("text_dim", 64))
    m.text.n_layer = 2
    m.text.n_head = 2
    m.text.dropout = 0.0
    m.d_proj = 64
    m.proj_dropout = 0.1
    c.batch_size = int(args.get("batch", 64))
    c.total_steps = int(args.get("steps", 700))
    c.data.kind = "tfrecord"
    c.data.dirs = tuple(args.get("dirs", "runs/demo/data/tfrecords").split(":"))
    c.data.clip_seconds = CLIP_SECONDS
    c.data.num_workers = 0
    if "random" in args:  # the old self-contained variant: learnable tone/caption pairs, no files
        c.data.kind = "random"
        c.data.dirs = ()
        c.data.num_classes = 8
    c.mesh.data, c.mesh.fsdp = 4, 2
    c.sharding.rules = [(".*", "fsdp")]
    c.sharding.fsdp_min_size = 2 ** 10
    c.loss.kind = "sharded"
    c.optim.name = "adamw"
    c.optim.lr = float(args.get("lr", 2e-3))
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 30
    c.optim.min_lr_ratio = 0.05
    c.optim.grad_clip_norm = 1.0
    c.ckpt.every_steps = 100
    c.log.every_steps = 10
    return c
