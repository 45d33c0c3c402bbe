# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m clap_jax.train --config configs/tiny.py --workdir /tmp/clap_tiny
# variants: configs/tiny.py:fsdp  |  :sharded_loss  |  :steps=20  |  :seconds=0.5
#   :dirs=gs://bucket/a,dirs=s3://bucket/b,rate=8000   train on preprocessed TFRecords (local or bucket) at 8 kHz
#   :wide   64-channel HTSAT and 128-wide GPT-2, head width 64 as in GPT-2: matmuls dominate the step's FLOPs as at
#           full size (compiled FLOPs within 10 % of train/flops.py's matmul count; at the default widths the
#           vector work, GELU's erf and the norms, adds a fifth)
"""Tiny model, 1 s clips, batch 16 on 8 simulated CPU devices: every code path in seconds (tests)."""
from clap_jax.models import registry
from clap_jax.train.config import base, parse_args

ARGS = dict(batch_size=16, steps=6, seconds=1.0, fsdp=False, sharded_loss=False, ckpt_every=2, dirs=(), rate=0,
            wide=False)


def get_config(arg: str = ""):
    a = parse_args(arg, ARGS, "configs/tiny.py")
    c = base()
    c.model = registry.model_config("msclap-2023-tiny")
    c.model.audio.specaug = False
    if a["wide"]:
        c.model.audio.embed_dim, c.model.audio.num_heads = 64, (1, 2, 4, 8)
        c.model.text.n_embd, c.model.text.n_head = 128, 2
        c.model.d_proj = 128
    c.model.audio.duration = a["seconds"]   # the clip the model is trained, evaluated and exported at
    c.batch_size = a["batch_size"]
    c.total_steps = a["steps"]
    c.data.kind = "random"
    c.data.num_workers = 0                  # tests run in-process ('tfrecord' variants): no worker processes
    if a["dirs"]:
        c.data.kind = "tfrecord"
        c.data.dirs = a["dirs"]
    if a["rate"]:
        c.model.audio.sample_rate = a["rate"]   # the rate the data was preprocessed at
    c.optim.schedule = "constant"
    c.optim.lr = 1e-3
    c.sharding.fsdp_min_size = 0
    if a["fsdp"]:
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.sharding.rules = [(".*", "fsdp")]
    if a["sharded_loss"]:
        c.loss.kind = "sharded"
    c.ckpt.every_steps = a["ckpt_every"]
    c.ckpt.keep = 10
    c.log.every_steps = 1
    return c
