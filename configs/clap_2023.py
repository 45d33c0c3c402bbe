# python -m clap_jax.train --config configs/clap_2023.py:dirs=/data/tfr_a:/data/tfr_b --workdir $WORKDIR
# variants: :fsdp  |  :cosine  |  :bf16  |  :remat  |  :batch_size=512  |  :epochs=N  |  :random (synthetic data);
# combine with commas, e.g. configs/clap_2023.py:fsdp,bf16,dirs=/data/a:/data/b
"""The CLAP 2023 recipe: HTSAT + GPT-2, d_proj 1024, global batch 1536, Adam lr 1e-3, learnable temperature,
reduce-on-plateau (x0.1 after 15 epochs without improvement). Warmup + cosine as an option (`:cosine`)."""
from clap_jax.models import config as model_config
from clap_jax.train.config_base import base


def get_config(arg: str = ""):
    args = dict(a.split("=", 1) if "=" in a else (a, "1") for a in (arg or "").split(",") if a)
    c = base()
    c.model = model_config.clap_2023()
    c.batch_size = int(args.get("batch_size", 1536))
    c.data.kind = "tfrecord"
    c.data.dirs = tuple(d for d in args.get("dirs", "").split(":") if d)
    if "random" in args:  # synthetic batches at full size (benchmarks, smoke runs)
        c.data.kind = "random"
    c.data.clip_seconds = 7.0
    examples_per_epoch = int(args.get("epoch_examples", 4_600_000))   # the paper's 4.6M pairs
    steps_per_epoch = max(1, examples_per_epoch // c.batch_size)
    # Run length: not pinned down by our references; 45 epochs (= 3 plateau patiences) is our default, `:epochs=N`.
    c.total_steps = int(args.get("epochs", 45)) * steps_per_epoch
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.schedule = "reduce_on_plateau"
    c.optim.plateau.factor = 0.1
    c.optim.plateau.patience = 15
    c.optim.plateau.accumulation_size = steps_per_epoch
    if "cosine" in args:
        c.optim.schedule = "warmup_cosine"
        c.optim.warmup_steps = 2000
    if "fsdp" in args:
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.sharding.rules = [(".*", "fsdp")]
    if "bf16" in args:   # bfloat16 compute, float32 parameters and loss
        c.model.dtype = "bfloat16"
    if "remat" in args:  # rematerialise transformer blocks: less activation memory, ~1/3 more compute
        c.model.remat = True
    c.loss.kind = "sharded"
    c.ckpt.every_steps = 1000
    c.log.every_steps = 50
    return c
