# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m clap_jax.train --config configs/demo.py --workdir /tmp/clap_demo
# variants: configs/demo.py:tfrecord,dirs=/data/clotho_tfr  (real pipeline)  |  :steps=300
"""The README's main job: a tiny CLAP on 8 simulated CPU devices (4 data x 2 FSDP mesh, row-sharded loss) learning
to match tones with captions (synthetic pairs, 8 classes) in a few minutes; `:tfrecord,dirs=...` switches to real data.

What to expect (measured on 2 shared CPU cores): ~4 minutes in all (compile ~45 s, then ~1.5 steps/s); the loss
falls from ln(32) = 3.47 (chance) to ~1.65 by step 200. Its floor is ~ln(4) = 1.39 and the accuracies' ceiling ~0.25, because a batch of 32 holds
about 4 clips of each class whose captions are identical. Kill it and rerun the same command: it resumes."""
from clap_jax.models import config as model_config
from clap_jax.train.config_base import base


def get_config(arg: str = ""):
    args = dict(a.split("=", 1) if "=" in a else (a, "1") for a in (arg or "").split(",") if a)
    c = base()
    c.model = model_config.tiny()
    c.batch_size = 32
    c.total_steps = int(args.get("steps", 200))
    c.data.kind = "random"
    c.data.num_classes = 8
    c.data.clip_seconds = 1.0
    if "tfrecord" in args:
        c.data.kind = "tfrecord"
        c.data.dirs = tuple(args["dirs"].split(":"))
    c.mesh.data, c.mesh.fsdp = 4, 2
    c.sharding.rules = [(".*", "fsdp")]
    c.sharding.fsdp_min_size = 2 ** 10
    c.loss.kind = "sharded"
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 20
    c.optim.grad_clip_norm = 1.0
    c.ckpt.every_steps = 50
    c.log.every_steps = 10
    return c
