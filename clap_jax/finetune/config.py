"""Fine-tuning settings: every field with its default, and the checks a config passes before anything is built.

A `--config` file is Python with `get_config()` returning `defaults()` changed where it wants; `--set
field=value` then overrides single fields (typed by the default). Unknown fields are refused, naming them.
"""
from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections

from clap_jax.errors import ConfigError


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.weights = ""                  # clap_jax checkpoint dir, training workdir or msclap .pth (any registered family)
    c.task = "esc50"                # a task name the eval readers produce (clap_jax/eval/tasks), single-label
    c.data_root = ""                # where the eval readers look for the dataset
    c.workdir = "runs/finetune"     # per-fold checkpoints and results, then the report
    c.reader_options = ml_collections.ConfigDict()   # {reader: {option: value}}, as the eval config's "options"
    c.seed = 0

    c.folds = 5                     # seeded k-fold split when the dataset defines no folds (else its own folds)
    c.only_folds = ()               # run only these folds (names as the dataset writes them, e.g. ("1",)); () all

    # 'embedding': the projected (joint-space) embedding, the space zero-shot and the linear probe score in; the
    # projection is fine-tuned too. 'latent': the audio tower's pooled output before the projection.
    c.head_input = "embedding"
    c.head_dropout = 0.0

    c.batch_size = 32               # global, split over every device
    c.steps = 1000                  # optimizer steps per fold
    c.eval_batch_size = 32
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4               # peak learning rate of the head; layer l of L below it gets lr * llrd^(L+1-l)
    c.optim.weight_decay = 0.05     # AdamW, on arrays of rank >= 2
    c.optim.warmup_steps = 50
    c.optim.min_lr_ratio = 0.01     # cosine decay down to lr * this
    c.optim.llrd = 0.75             # layer-wise learning-rate decay; 1.0 turns it off
    c.optim.grad_clip_norm = 1.0    # 0: off

    c.mixup = ml_collections.ConfigDict()
    c.mixup.alpha = 0.0             # > 0: mix waveform pairs with lambda ~ Beta(alpha, alpha); 0: off
    c.mixup.prob = 1.0              # share of batches mixed
    c.specaug = False               # the audio tower's SpecAugment (its model config's stripe widths) while training

    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.every_steps = 200
    c.ckpt.keep = 2
    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 20

    c.zero_shot = True              # also evaluate the weights zero-shot on the task, written beside fine-tuning
    c.crop = "center"               # clips longer than the model's clip (clap_jax.audio.io.CROP_MODES)
    c.workers = 4                   # decoding threads
    return c


def _flat(c, prefix=""):
    for k, v in c.items():
        if isinstance(v, ml_collections.ConfigDict) and k != "reader_options":
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_known(c: ml_collections.ConfigDict) -> None:
    known = dict(_flat(defaults()))
    for name, _ in _flat(c):
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=1)
            raise ConfigError(f"unknown fine-tuning field {name}" + (f", did you mean {near[0]}?" if near else ""))


def validate(c: ml_collections.ConfigDict) -> None:
    """ConfigError naming the field for a bad value."""
    check_known(c)

    def need(ok, field, msg):
        if not ok:
            raise ConfigError(f"config.{field}: {msg}")
    need(bool(c.weights), "weights", "required: a clap_jax checkpoint, training workdir or msclap .pth (--weights)")
    need(bool(c.data_root), "data_root", "required: the folder that holds the dataset (--data-root)")
    need(bool(c.task), "task", "required (--task), e.g. esc50")
    need(c.head_input in ("embedding", "latent"), "head_input", f"'embedding' or 'latent', not {c.head_input!r}")
    need(0 <= c.head_dropout < 1, "head_dropout", "must be in [0, 1)")
    need(c.folds >= 2, "folds", "must be >= 2")
    need(c.batch_size >= 1, "batch_size", "must be >= 1")
    need(c.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
    need(c.steps >= 1, "steps", "must be >= 1")
    need(c.optim.lr > 0, "optim.lr", "must be > 0")
    need(c.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(c.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(0 < c.optim.llrd <= 1, "optim.llrd", "must be in (0, 1]")
    need(c.optim.grad_clip_norm >= 0, "optim.grad_clip_norm", "must be >= 0")
    need(c.mixup.alpha >= 0, "mixup.alpha", "must be >= 0")
    need(0 <= c.mixup.prob <= 1, "mixup.prob", "must be in [0, 1]")
    need(c.ckpt.every_steps >= 1, "ckpt.every_steps", "must be >= 1")
    need(c.ckpt.keep >= 1, "ckpt.keep", "must be >= 1")
    need(c.log.every_steps >= 1, "log.every_steps", "must be >= 1")


def load_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a Python config file."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file")
    spec = importlib.util.spec_from_file_location("clap_jax_finetune_config", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - a user file: report it in one line
        raise ConfigError(f"--config {path}: cannot be loaded ({type(e).__name__}: {e})") from None
    if not hasattr(mod, "get_config"):
        raise ConfigError(f"--config {path}: defines no get_config()")
    c = mod.get_config()
    if not isinstance(c, ml_collections.ConfigDict):
        raise ConfigError(f"--config {path}: get_config() must return an ml_collections.ConfigDict")
    check_known(c)
    return c


def set_field(c: ml_collections.ConfigDict, item: str) -> None:
    """`field.sub=value` with the value typed like the default."""
    name, eq, value = item.partition("=")
    if not eq:
        raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
    known = dict(_flat(defaults()))
    if name not in known:
        near = difflib.get_close_matches(name, list(known), n=1)
        raise ConfigError(f"--set {name}: unknown field" + (f", did you mean {near[0]}?" if near else ""))
    default = known[name]
    try:
        if isinstance(default, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            typed = value.lower() in ("1", "true", "yes")
        elif isinstance(default, (tuple, list)):
            typed = tuple(v for v in value.split(",") if v)
        else:
            typed = type(default)(value)
    except ValueError:
        raise ConfigError(f"--set {name}={value}: expected a {type(default).__name__}") from None
    *parents, leaf = name.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = typed
