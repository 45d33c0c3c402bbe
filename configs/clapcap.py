# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m clap_jax.train \
#     --config configs/clapcap.py:dirs=/data/audiocaps/tfrecords,clap=CLAP_weights_2023.pth,gpt2=/models/gpt2 \
#     --workdir runs/clapcap
# variants: :tiny (tiny captioner, 1 s clips, learnable random pairs: tests) | :demo (the main job's captioner
#   on the built-in data, audio encoder from the demo CLAP run: clap=runs/demo/train) | :train_audio | :train_gpt
#   | :steps=N | :batch=N | :lr=X | :text_from=W (GPT-2 from W's text tower / decoder) | :text_len=N
"""Caption training: msclap's captioner ('clapcap': CLAP audio encoder -> L2-normalised embedding -> transformer
mapper to a 40-position prefix -> GPT-2 with its LM head) trained with teacher-forced cross-entropy on the caption
tokens after the prefix (objective 'prefix_lm'). Captions are tokenised as msclap tokenises text for GPT-2:
`caption + ' <|endoftext|>'`, padded with '!' (id 0); the loss covers every real token, so the model learns to
end with the bare-space token (220) that msclap's decoder stops at, and padding is ignored.

As msclap builds it for training, the audio encoder and GPT-2 are frozen and only the mapper learns
(`train_audio` / `train_gpt` unfreeze them; a frozen audio encoder runs in inference mode). Initialisation:
`clap=W` takes the audio encoder from CLAP weights W (a clap_jax run dir or checkpoint, or msclap's
CLAP_weights_2023.pth), `gpt2=DIR` GPT-2 from Hugging Face files (msclap's decoder is the pretrained 'gpt2'),
`text_from=W` GPT-2 from another model's text tower or decoder. msclap never released its training recipe; the
optimiser here is ClipCap's (AdamW, warmup then decay)."""
from clap_jax.models import registry
from clap_jax.train.config import base, parse_args

ARGS = dict(tiny=False, demo=False, dirs=(), steps=0, batch=0, lr=0.0, clap="", gpt2="", text_from="",
            train_audio=False, train_gpt=False, text_len=0, ckpt_every=0, seconds=1.0, prefix=0, mapper_layers=0)


def _demo_model():
    """The demo CLAP's audio and text geometry (configs/demo.py) as a captioner: its audio tower and GPT-2 are
    the ones the demo run trained, so that run's weights initialise them."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("_demo_cfg", os.path.join(os.path.dirname(__file__), "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.get_config("").model
    cap = registry.model_config("msclap-clapcap-tiny")
    m.family = cap.family
    m.caption = cap.caption
    m.caption.prefix_length, m.caption.clip_length, m.caption.num_layers = 8, 8, 2
    m.caption.num_heads = 2
    m.caption.max_steps = 32
    m.text.max_length = 32          # the built-in captions are at most about 25 GPT-2 tokens with <|endoftext|>
    return m


def get_config(arg: str = ""):
    a = parse_args(arg, ARGS, "configs/clapcap.py")
    c = base()
    c.objective = "prefix_lm"
    if a["demo"]:
        c.model = _demo_model()
        c.batch_size, c.total_steps = 16, 300
        c.optim.lr = 3e-3
        c.mesh.data, c.mesh.fsdp = 8, 1
        c.sharding.fsdp_min_size = 2 ** 10
        c.data.kind, c.data.dirs, c.data.num_workers = "tfrecord", ("runs/demo/data/tfrecords",), 0
        c.optim.warmup_steps = 20
        c.ckpt.every_steps = 100
        c.log.every_steps = 20
    elif a["tiny"]:
        c.model = registry.model_config("msclap-clapcap-tiny")
        m = c.model
        m.audio.specaug = False
        m.audio.duration = a["seconds"]
        # a 64x64 spectrogram image (32 mel bins x 128 frames at 16 kHz): the same code paths, 16x fewer tokens
        m.audio.sample_rate = m.audio.mel_sr = 16000
        m.audio.n_fft, m.audio.hop_size, m.audio.fmax = 512, 160, 8000.0
        m.audio.spec_size, m.audio.mel_bins, m.audio.window_size = 64, 32, 4
        m.audio.depths = (1, 1, 1, 1)
        c.model.text.max_length = 16
        c.model.caption.max_steps = 16
        c.batch_size, c.total_steps = 16, 6
        c.optim.lr = 3e-3
        c.data.kind, c.data.num_classes, c.data.num_workers = "random", 8, 0
        c.sharding.fsdp_min_size = 0
        c.optim.warmup_steps = 0
        c.ckpt.every_steps, c.ckpt.keep = 2, 10
        c.log.every_steps = 1
    else:   # msclap's captioner at full size
        c.model = registry.model_config("msclap-clapcap")
        c.batch_size, c.total_steps = 128, 50_000
        c.optim.lr = 2e-5
        c.optim.warmup_steps = 5000
        c.data.kind = "tfrecord"
    if a["text_len"]:
        c.model.text.max_length = a["text_len"]
    if a["prefix"]:
        c.model.caption.prefix_length = c.model.caption.clip_length = a["prefix"]
    if a["mapper_layers"]:
        c.model.caption.num_layers = a["mapper_layers"]
    if a["dirs"]:
        c.data.kind, c.data.dirs = "tfrecord", a["dirs"]
    c.batch_size = a["batch"] or c.batch_size
    c.total_steps = a["steps"] or c.total_steps
    c.optim.lr = a["lr"] or c.optim.lr
    c.optim.name = "adamw"
    c.optim.weight_decay = 0.01
    c.optim.schedule = "warmup_cosine" if c.total_steps > c.optim.warmup_steps else "constant"
    c.optim.min_lr_ratio = 0.05
    c.optim.grad_clip_norm = 1.0
    c.optim.towers.clap.freeze = not a["train_audio"]
    c.optim.towers.gpt.freeze = not a["train_gpt"]
    if a["clap"]:
        c.init.audio_encoder = a["clap"]
    if a["gpt2"]:
        c.init.hf_gpt2 = a["gpt2"]
    if a["text_from"]:
        c.init.text_decoder = a["text_from"]
    if a["ckpt_every"]:
        c.ckpt.every_steps = a["ckpt_every"]
    return c
