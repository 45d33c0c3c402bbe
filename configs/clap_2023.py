# python -m clap_jax.train --config configs/clap_2023.py:dirs=/data/tfr_a,dirs=/data/tfr_b --workdir $WORKDIR
# variants: :pod (FSDP + bf16: the layout for TPU pods and multi-GPU)  |  :fsdp  |  :cosine  |  :bf16  |  :remat  |
#           :batch_size=512  |  :epochs=N  |  :random (synthetic data);
# combine with commas, e.g. configs/clap_2023.py:fsdp,bf16,dirs=gs://bucket/a,dirs=gs://bucket/b
"""The CLAP 2023 recipe: HTSAT + GPT-2, d_proj 1024, global batch 1536, Adam lr 1e-3, learnable temperature,
reduce-on-plateau (x0.1 after 15 epochs without improvement). Warmup + cosine as an option (`:cosine`)."""
from clap_jax.models import registry
from clap_jax.train.config import base, parse_args

ARGS = dict(batch_size=1536, dirs=(), random=False, epoch_examples=4_600_000, epochs=45, cosine=False, fsdp=False,
            bf16=False, remat=False, pod=False)


def get_config(arg: str = ""):
    args = parse_args(arg, ARGS, "configs/clap_2023.py")
    c = base()
    c.model = registry.model_config("msclap-2023")   # 7 s clips at 44.1 kHz, 77 tokens
    c.batch_size = args["batch_size"]
    c.data.kind = "tfrecord"
    c.data.dirs = args["dirs"]
    if args["random"]:  # synthetic batches at full size (benchmarks, smoke runs)
        c.data.kind = "random"
    examples_per_epoch = args["epoch_examples"]   # the paper's 4.6M pairs
    steps_per_epoch = max(1, examples_per_epoch // c.batch_size)
    # The paper does not give its run length: 45 epochs (3 plateau patiences) is our default, `:epochs=N`.
    c.total_steps = args["epochs"] * steps_per_epoch
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.schedule = "reduce_on_plateau"
    c.optim.plateau.factor = 0.1
    c.optim.plateau.patience = 15
    c.optim.plateau.accumulation_size = steps_per_epoch
    if args["cosine"]:
        c.optim.schedule = "warmup_cosine"
        c.optim.warmup_steps = 2000
    if args["pod"]:
        # From the deviceless compile table (python -m clap_jax.train.compile, README "Scale"): FSDP over every
        # chip of a slice and bfloat16 compute. Remat stays off: the step fits without it on v5e-16 and v5p-64.
        args["fsdp"] = args["bf16"] = True
    if args["fsdp"]:
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.sharding.rules = [(".*", "fsdp")]
    if args["bf16"]:   # bfloat16 compute, float32 parameters and loss
        c.model.dtype = "bfloat16"
    if args["remat"]:  # rematerialise transformer blocks: less activation memory, ~1/3 more compute
        c.model.remat = True
    c.loss.kind = "sharded"
    c.ckpt.every_steps = 1000
    c.log.every_steps = 50
    return c
