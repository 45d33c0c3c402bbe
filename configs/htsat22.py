# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m clap_jax.train \
#     --config configs/htsat22.py --config.data.tasks='...' --workdir runs/htsat22      (fill the task slots first)
# variants: :tiny (tiny model: tests) | :demo (the built-in data's tasks, demo-sized model: data=DIR, the
#   dataset of clap_jax.data.synthetic with its task records, python -m clap_jax.train.htsat22_demo builds them)
#   | :steps=N | :batch=N
"""HTSAT-22: multi-task generative pretraining of the audio encoder (CLAP 2023, section 2.2: HTSAT trained on 22
audio tasks "similar to Pengi"). The audio encoder and a mapper make a prefix for GPT-2, which reads a text prompt
naming the task and is trained to write the answer (objective 'prefix_lm': cross-entropy on the answer tokens
only; prompt and padding are ignored). The model is the captioner's (clap_jax.models.clapcap); unlike caption
training the audio encoder learns (it is the product) and GPT-2 is fine-tuned.

The task list the paper implies, each a named slot: fill `dirs` with TFRecord directories (python -m
clap_jax.data.preprocess on the prompt/answer records of clap_jax.data.multitask), keep or change the prompt,
answer format and weight. Slots left without data are dropped from the mixture. A finished run initialises CLAP
pretraining's audio encoder: configs/clap_2023.py with --config.init.audio_encoder=runs/htsat22."""
from clap_jax.models import registry
from clap_jax.train.config import base, parse_args

ARGS = dict(tiny=False, demo=False, data="runs/htsat22_demo/data", steps=0, batch=0)

# name, prompt, answer format, label key, weight (answers: 'label' = one label, 'labels' = every label of a
# multi-label clip joined by ', ', 'caption' = a caption, 'text' = free text)
TASKS = (
    ("sound_events", "what sound events are in this audio?", "labels", None, 3.0),   # AudioSet, FSD50K
    ("vocal_sounds", "what vocal sound is this?", "label", 0, 1.0),                  # VocalSound
    ("scenes", "what acoustic scene is this?", "label", 0, 1.0),                     # TUT / DCASE scenes
    ("music_genre", "what is the music genre?", "label", 0, 1.0),                    # GTZAN-like genres
    ("instruments", "what instrument is playing?", "label", 0, 1.0),                 # NSynth instrument family
    ("emotion", "what emotion does the speaker convey?", "label", 0, 1.0),           # CREMA-D, RAVDESS
    ("keyword_spotting", "what word is spoken?", "label", 0, 1.0),                   # Speech Commands
    ("counting", "how many speakers are there?", "label", 0, 0.5),                   # LibriCount
    ("captioning", "caption this audio.", "caption", None, 3.0),                     # AudioCaps, Clotho, ...
)


def task_slots() -> tuple[dict, ...]:
    return tuple({"name": n, "prompt": p, "answer": a, "label_key": k, "weight": w, "dirs": ()}
                 for n, p, a, k, w in TASKS)


def _demo_model():
    """configs/demo.py's audio encoder (so that the demo CLAP can be initialised from this run) with the demo
    captioner's mapper and small GPT-2 (configs/clapcap.py:demo); room for a prompt and a built-in caption."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("_clapcap_cfg", os.path.join(os.path.dirname(__file__),
                                                                                "clapcap.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod._demo_model()
    m.text.max_length = 32       # prompt (<= 8 GPT-2 tokens) + a built-in caption (a longer one is cut)
    return m


def demo_tasks(data: str) -> tuple[dict, ...]:
    """The built-in dataset's tasks (clap_jax.data.multitask.BUILTIN_TASKS) with their directories under `data`."""
    from clap_jax.data import multitask

    return tuple({"name": t.name, "prompt": t.prompt, "answer": t.answer, "label_key": t.label_key,
                  "weight": t.weight, "dirs": (multitask.builtin_task_dir(data, t.name),)}
                 for t in multitask.BUILTIN_TASKS)


def get_config(arg: str = ""):
    a = parse_args(arg, ARGS, "configs/htsat22.py")
    c = base()
    c.objective = "prefix_lm"
    if a["demo"]:
        c.model = _demo_model()
        c.batch_size, c.total_steps = 32, 800
        c.mesh.data, c.mesh.fsdp = 8, 1
        c.sharding.fsdp_min_size = 2 ** 10
        c.data.kind, c.data.num_workers = "tfrecord", 0
        c.ckpt.every_steps, c.log.every_steps = 100, 10
    elif a["tiny"]:
        c.model = registry.model_config("msclap-clapcap-tiny")
        c.model.audio.specaug = False
        c.model.text.max_length = 24
        c.batch_size, c.total_steps = 16, 6
        c.data.kind, c.data.num_workers = "random", 0
    else:
        c.model = registry.model_config("msclap-clapcap")
        c.model.text.max_length = 48                # prompt + answer
        c.batch_size, c.total_steps = 256, 200_000
        c.data.kind = "tfrecord"
    c.data.tasks = demo_tasks(a["data"]) if a["demo"] else task_slots()
    c.batch_size = a["batch"] or c.batch_size
    c.total_steps = a["steps"] or c.total_steps
    c.optim.name = "adamw"
    # demo: 1e-3. At 2e-3 (800 steps of 16) loudness was never learned (8 runs: its answer loss ended at ln 2, one
    # answer for every clip); at 1e-3 CLAP from the pretrained encoder passes scratch's final zero-shot mean within
    # 60-120 of 240 steps. Batch 32 x 800 steps (same clips seen as 16 x 1600): CLAP from every one of three seeds
    # ended 67-70 % (16 x 1600: 55-78 %, average 69.0 vs 67.3 %); two of three seeds answered all four attributes
    # above chance either way (README)
    c.optim.lr = 1e-3 if a["demo"] else 1e-4
    c.optim.weight_decay = 0.01
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = min(2000, c.total_steps // 10)
    if a["demo"]:
        c.optim.min_lr_ratio = 0.05
    c.optim.grad_clip_norm = 1.0
    c.optim.towers.clap.freeze = False     # the audio encoder is what this run trains
    c.optim.towers.gpt.freeze = False
    if a["demo"]:
        # the encoder at 0.3x the learning rate of the mapper and GPT-2. At 1x, two of three seeds pretrained near
        # chance on three of the four attributes and CLAP from them gained nothing; at 0.3x every seed answered
        # sound above chance and CLAP from the three passed scratch's final zero-shot mean in half the steps (README)
        c.optim.towers.clap.lr_mult = 0.3
    # the audio embedding goes to the mapper unnormalised, not L2-normalised as in msclap's captioner: the
    # embeddings of a small encoder at init differ little and a tiny run learned only the answers' prior in 100
    # steps normalised (pitch 37 % held-out, chance 33 %), 65 % after 40 steps unnormalised.
    c.model.caption.normalize_prefix = False
    # a batch norm on the embedding before the mapper (folded into the mapper when exported to msclap's layout):
    # without it the demo encoder, trained from scratch by the answer loss alone, collapsed to one embedding for
    # every clip (spread between clips 1e-4 of its norm after 1000 steps, every prompt answered with the prior:
    # held-out accuracy at chance); with it the spread stays ~0.6 and the answers use the audio. The tiny test
    # config (one task, 80 steps) learns without it.
    c.model.caption.prefix_batch_norm = not a["tiny"]
    return c
