# bash scripts/main.sh   (builds the data, then runs:)
# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m clap_jax.train \
#     --config configs/demo.py:dirs=runs/demo/data/tfrecords --workdir runs/demo/train
# variants: :steps=300 | :batch=32 | :spec=256 | :mel=32 | :lr=1e-3 | :specaug | :stft=fft | :random (learnable
# tone/caption pairs, no data needed) | :dirs=A,dirs=B (several TFRecord dirs)
"""The README's main job: a small CLAP on 8 simulated CPU devices (4 data x 2 FSDP mesh, row-sharded loss) trained
on the built-in synthetic dataset (`clap_jax.data.synthetic`: 8 sound classes x pitch x loudness x rhythm, templated
captions), read by the real Grain pipeline from its TFRecords ('train' split only; the 'eval' clips are never seen).

Sizes are chosen for 2 CPU cores. HTSAT's cost is set by its spectrogram image, not by the clip length: a 128x128
image (64 mel bins x 256 frames at 16 kHz, n_fft 512, hop 160: the clip's 251 frames at their own resolution) has
4x fewer tokens than msclap's 256x256 and runs about 2x faster, which buys batch 64 (more negatives per step). The
audio tower is narrow (embed_dim 16, one block per stage); the text tower is a 2-layer GPT-2 of width 64 (the
50257 x 64 token embedding is most of its 3.7M parameters). The model's clip is the synthetic clip (2.5 s at 16 kHz):
HTSAT stretches every clip's spectrogram to the same image, so the model is trained, evaluated and exported at it.
SpecAugment is off (msclap's stripe widths would blank up to half of a 2.5 s clip), the temperature learns 10x
faster than the weights, and the synthetic training captions sometimes name only some attributes, so that a prompt
naming one attribute has texts like it to match. README.md gives the measured results and the run-to-run spread.
Kill it and rerun the same command: it resumes from the newest checkpoint."""
from clap_jax.models import registry
from clap_jax.train.config import base, parse_args

CLIP_SECONDS = 2.5  # = clap_jax.data.synthetic's default --seconds
SAMPLE_RATE = 16000  # main.sh builds the data with --sample-rate 16000 (the pipeline requires the model's rate)


ARGS = dict(steps=800, batch=64, spec=128, mel=0, lr=2e-3, specaug=False, stft="matmul", random=False,
            dirs=("runs/demo/data/tfrecords",), audio_dim=16, tw=16, fw=0, text_dim=64, pdrop=0.0, scale_lr=10.0)


def get_config(arg: str = ""):
    args = parse_args(arg, ARGS, "configs/demo.py")
    c = base()
    m = c.model = registry.model_config("msclap-2023-tiny")
    m.audio.embed_dim = args["audio_dim"]
    m.audio.depths = (1, 1, 1, 1)
    m.audio.num_heads = (1, 2, 4, 8)
    m.audio.drop_path_rate = 0.0
    m.audio.duration = CLIP_SECONDS
    m.audio.sample_rate = SAMPLE_RATE
    m.audio.n_fft, m.audio.hop_size = 512, 160
    m.audio.stft = args["stft"]
    m.audio.mel_sr, m.audio.fmin, m.audio.fmax = SAMPLE_RATE, 50.0, SAMPLE_RATE / 2
    # 64 mel bins x 256 frames folded into a 128x128 image: the 2.5 s clip's 251 frames at their own resolution
    # (msclap's 1:4 shape, 32 bins x 512 frames here, blurs the chirps' slopes and the siren's warble)
    m.audio.spec_size, m.audio.mel_bins = args["spec"], args["mel"] or args["spec"] // 2
    # :specaug turns SpecAugment on with stripes scaled to this clip
    m.audio.specaug = args["specaug"]
    m.audio.specaug_time_width = args["tw"]
    m.audio.specaug_freq_width = args["fw"] or max(1, m.audio.mel_bins // 8)
    m.text.n_embd = args["text_dim"]
    m.text.n_layer = 2
    m.text.n_head = 2
    m.text.dropout = 0.0
    m.d_proj = 64
    m.proj_dropout = args["pdrop"]
    c.batch_size = args["batch"]
    c.total_steps = args["steps"]
    c.data.kind = "tfrecord"
    c.data.dirs = args["dirs"]
    c.data.num_workers = 0
    if args["random"]:  # self-contained variant: learnable tone/caption pairs, no files
        c.data.kind = "random"
        c.data.dirs = ()
        c.data.num_classes = 8
    c.mesh.data, c.mesh.fsdp = 4, 2
    c.sharding.rules = [(".*", "fsdp")]
    c.sharding.fsdp_min_size = 2 ** 10
    c.loss.kind = "sharded"
    c.optim.name = "adamw"
    c.optim.lr = args["lr"]
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 30
    c.optim.min_lr_ratio = 0.05
    c.optim.grad_clip_norm = 1.0
    # the temperature learns 10x faster than the weights: 1/0.07 -> ~40 within the run instead of ~19
    c.optim.towers.logit_scale.lr_mult = args["scale_lr"]
    c.ckpt.every_steps = 100
    c.log.every_steps = 10
    return c
