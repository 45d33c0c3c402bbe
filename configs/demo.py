# bash scripts/main.sh   (builds the data, then runs:)
# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m clap_jax.train \
#     --config configs/demo.py:dirs=runs/demo/data/tfrecords --workdir runs/demo/train
# variants: :steps=300 | :random (old tone/caption pairs, no data needed) | :dirs=A:B (several TFRecord dirs)
"""The README's main job: a small CLAP on 8 simulated CPU devices (4 data x 2 FSDP mesh, row-sharded loss) trained
on the built-in synthetic dataset (`clap_jax.data.synthetic`: 8 sound classes x pitch x loudness x rhythm, templated
captions), read by the real Grain pipeline from its TFRecords ('train' split only; the 'eval' clips are never seen).

Sizes were chosen for 2 CPU cores: HTSAT's cost is set by its fixed 256x256 spectrogram image, not by the clip length,
so the audio tower is kept narrow (embed_dim 16, one block per stage) while the text tower is a 2-layer GPT-2 of width
64 (the 50257 x 64 token embedding is most of its parameters). `model.audio.duration` equals `data.clip_seconds`
(2.5 s, the synthetic clip length): HTSAT stretches every clip's spectrogram to the same image, so a model must be
evaluated at the duration it was trained at (`python -m clap_jax.eval --duration 2.5`, which main.sh passes).
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
    spec = int(args.get("spec", 256))  # :spec=128: 32 mel bins x 512 frames, 4x fewer tokens, 2x faster, worse
    m.audio.spec_size, m.audio.mel_bins = spec, spec // 4
    m.text.n_embd = int(args.get("text_dim", 64))
    m.text.n_layer = 2
    m.text.n_head = 2
    m.text.dropout = 0.0
    m.d_proj = 64
    m.proj_dropout = 0.1
    c.batch_size = 32
    c.total_steps = int(args.get("steps", 500))
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
