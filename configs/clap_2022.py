# python -m clap_jax.train --config configs/clap_2022.py:dirs=/data/tfr_a,dirs=/data/tfr_b,vocab=/models/bert --workdir $WORKDIR
# variants: :fsdp  |  :bf16  |  :remat  |  :batch_size=N  |  :epochs=N  |  :random (synthetic batches)
#           :tiny (the msclap-2022-tiny model, 0.5 s clips, batch 16, random batches unless dirs=: CPU tests)
"""The CLAP 2022 recipe: CNN14 + BERT-base (msclap's version '2022'), d_proj 1024, learnable temperature,
5 s clips at 44.1 kHz, 100-token captions.

Where each number comes from:
  * 128k training pairs (the 2022 paper's abstract): the epoch length, `epoch_examples`.
  * batch size 1024: msclap's config_2022.yml (`batch_size: 1024`), the only batch size the released 2022 model
    states; the 2022 paper's own text here (abstract and introduction) gives none.
  * optimiser: OUR CHOICE, the CLAP 2023 recipe's Adam at lr 1e-3 with reduce-on-plateau (x0.1 after 15 epochs
    without improvement), which the 2023 paper presents as its predecessor's training set-up; not stated in the
    2022 text at hand.
  * epochs: OUR CHOICE, 40 (two plateau patiences and then some); the 2022 text at hand does not give its length.
  * both towers trained (msclap's YAML carries `freeze_text_encoder_weights: True`, an inference-time setting the
    2022 model was released with; the optimiser config can freeze a tower if wanted).
  * no SpecAugment: msclap's Cnn14 has none.

BatchNorm: the trainer's jitted step over the global batch gives CNN14 statistics of the whole global batch
(synchronised over data parallelism and FSDP; see clap_jax.models.cnn14).

Captions are tokenized in the data workers with BERT WordPiece (uncased) from `vocab=`: a directory holding
`vocab.txt` (a HF `bert-base-uncased` checkpoint directory) or the file itself; without it, `bert-base-uncased`
from the local Hugging Face cache. `:random` trains on synthetic batches (no vocabulary needed).
"""
from clap_jax.models import registry
from clap_jax.train.config import base, parse_args

ARGS = dict(batch_size=1024, dirs=(), random=False, epoch_examples=128_000, epochs=40, fsdp=False, bf16=False,
            remat=False, tiny=False, steps=6, ckpt_every=2, vocab="")


def get_config(arg: str = ""):
    args = parse_args(arg, ARGS, "configs/clap_2022.py")
    c = base()
    c.model = registry.model_config("msclap-2022-tiny" if args["tiny"] else "msclap-2022")
    c.batch_size = args["batch_size"]
    c.data.kind = "tfrecord"
    c.data.dirs = args["dirs"]
    c.data.tokenizer = args["vocab"] or None
    if args["random"] or (args["tiny"] and not args["dirs"]):
        c.data.kind = "random"
    steps_per_epoch = max(1, args["epoch_examples"] // c.batch_size)
    c.total_steps = args["epochs"] * steps_per_epoch
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.schedule = "reduce_on_plateau"
    c.optim.plateau.factor = 0.1
    c.optim.plateau.patience = 15
    c.optim.plateau.accumulation_size = steps_per_epoch
    if args["fsdp"]:
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.sharding.rules = [(".*", "fsdp")]
    if args["bf16"]:
        c.model.dtype = "bfloat16"
    if args["remat"]:
        c.model.remat = True
    c.loss.kind = "sharded"
    c.ckpt.every_steps = 1000
    c.log.every_steps = 50
    if args["tiny"]:   # CPU tests: every code path in seconds
        c.model.audio.duration = 0.5
        c.batch_size = 16 if args["batch_size"] == ARGS["batch_size"] else args["batch_size"]
        c.total_steps = args["steps"]
        c.data.num_workers = 0
        c.optim.schedule = "constant"
        c.loss.kind = "global"
        c.sharding.fsdp_min_size = 0
        c.ckpt.every_steps = args["ckpt_every"]
        c.ckpt.keep = 10
        c.log.every_steps = 1
    return c
