# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m clap_jax.train --config configs/tiny.py --workdir /tmp/clap_tiny
# variants: configs/tiny.py:fsdp  |  :sharded_loss  |  :steps=20
"""Tiny model, 1 s clips, batch 16 on 8 simulated CPU devices: every code path in seconds (tests)."""
from clap_jax.models import config as model_config
from clap_jax.train.config_base import base


def get_config(arg: str = ""):
    args = dict(a.split("=", 1) if "=" in a else (a, "1") for a in (arg or "").split(",") if a)
    c = base()
    c.model = model_config.tiny()
    c.model.audio.specaug = False
    c.batch_size = int(args.get("batch_size", 16))
    c.total_steps = int(args.get("steps", 6))
    c.data.kind = "random"
    c.data.clip_seconds = float(args.get("seconds", 1.0))
    c.optim.schedule = "constant"
    c.optim.lr = 1e-3
    c.sharding.fsdp_min_size = 0
    if "fsdp" in args:
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.sharding.rules = [(".*", "fsdp")]
    if "sharded_loss" in args:
        c.loss.kind = "sharded"
    c.ckpt.every_steps = int(args.get("ckpt_every", 2))
    c.ckpt.keep = 10
    c.log.every_steps = 1
    return c
