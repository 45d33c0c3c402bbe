"""The trainer's config: every field with its default, and the checks a config passes before anything is built.

`configs/*.py` start from `base()` and override. Every field is read. `check_known_fields` rejects a config holding
a field `base()` does not know (a typo would otherwise be silently ignored) and locks it, so that setting an unknown
field later raises too. `parse_args` reads a config file's `:arg` string
(`configs/x.py:fsdp,batch_size=512,dirs=/a,dirs=/b`) against the file's typed defaults. `validate_config` and
`check_data_dirs` reject bad values and missing data with a ConfigError naming the field, before any compile.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from clap_jax import files
from clap_jax.data import pipeline
from clap_jax.errors import ConfigError
from clap_jax.models import config as model_config
from clap_jax.train import optim as optim_lib
from clap_jax.train import sharding as shd


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = model_config.clap_2023()
    c.batch_size = 1536                 # global, over all devices and processes
    c.total_steps = 10_000
    c.objective = placeholder(str)      # 'contrastive' | 'prefix_lm' (clap_jax.train.objective); None: the model
    #                                     family's own (CLAP: contrastive, the captioner: prefix_lm)
    c.peak_flops_per_device = placeholder(float)  # override the device table for MFU (None: look up device kind)

    c.data = ml_collections.ConfigDict()
    c.data.kind = "random"              # 'random' (synthetic, tests / benchmarks) | 'tfrecord' (real pipeline)
    c.data.dirs = ()                    # TFRecord directories (kind='tfrecord')
    c.data.clip_seconds = placeholder(float)  # None: the model's audio.duration (the model config owns the clip
    #                                     geometry); if set, it must equal model.audio.duration
    c.data.num_classes = 0              # 'random': >0 gives learnable tone/caption pairs (demo)
    c.data.weights = placeholder(tuple)  # 'tfrecord': mixing weights, one per directory (None: one dataset)
    c.data.seed = 0
    c.data.tokenizer = placeholder(str)  # 'tfrecord': the model family's vocabulary (a directory or file; None:
    #                                     the built-in one, GPT-2 BPE for CLAP 2023; CLAP 2022's BERT needs one)
    c.data.num_workers = -1             # 'tfrecord': Grain worker processes per host (decode, crop, tokenize);
    #                                     -1: auto = min(8, cores // 2), or when resuming the count the
    #                                     checkpoint's iterator ran with (Grain's state needs the same count);
    #                                     0: in the main process (threads)
    c.data.prefetch = 2                 # global batches made and put on the devices ahead of the running step,
    #                                     while it runs (0: each fetched when its step is due)
    c.data.tasks = ()                   # multi-task prompt/answer training (objective 'prefix_lm', configs/htsat22.py):
    #                                     task slots {name, prompt, answer, label_key, weight, dirs}
    #                                     (clap_jax.data.multitask.Task); () : one caption dataset
    c.data.task_mix = "batch"           # tasks: 'batch' = each batch from one task, drawn by weight per batch;
    #                                     'example' = every batch mixes the tasks, each record drawn by weight
    c.data.max_consecutive_bad_records = 1000  # 'tfrecord': corrupt/undecodable records in a row before the run
    #                                     stops with an error naming the data (skipped and counted until then)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                    # within-slice sizes; one may be -1 (fills the rest)
    c.mesh.fsdp = 1
    c.mesh.tensor = 1                   # must be 1: tensor parallelism is not offered (FSDP splits the state)
    c.mesh.dcn_data = 1                 # across slices (multi-slice TPU); product = number of slices
    c.mesh.dcn_fsdp = 1
    c.mesh.dcn_tensor = 1

    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = [(".*", "replicate")]   # (regex on param path, tactic); FSDP: [('.*', 'fsdp')]
    c.sharding.fsdp_min_size = 2 ** 12  # arrays smaller than this stay replicated under 'fsdp'
    c.sharding.max_replicated_mb = 64   # 'fsdp' arrays no dimension of which the axis divides, held whole by
    #                                     every chip: more than this many MiB of them is refused before compiling

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "global"              # 'global' | 'sharded' (row-sharded logits, memory-lean)
    c.loss.max_log_scale = 4.605170185988092  # ln(100)
    c.loss.mlp = False                  # laion-clap models: laion_clap's MLP loss (clap_jax.train.laion)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"               # 'adam' | 'adamw'
    c.optim.lr = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.no_decay = r"(bias|scale|logit_scale|ln_|norm|bn|embedding|wpe|wte)"  # never decayed (also all 1-D)
    c.optim.grad_clip_norm = placeholder(float)
    c.optim.schedule = "reduce_on_plateau"    # 'constant' | 'warmup_cosine' | 'reduce_on_plateau'
    c.optim.warmup_steps = 0
    c.optim.min_lr_ratio = 0.0          # warmup_cosine end value / lr
    c.optim.grad_accum_steps = 1        # micro-batches per step (activations held for one at a time)
    c.optim.grad_accum_mode = "cached"  # 'cached': loss over the whole batch (all its negatives), exact, one
    #                                     extra forward pass; 'independent': each micro-batch its own loss and
    #                                     negatives, gradients averaged (cheaper, a smaller effective batch)
    c.optim.plateau = ml_collections.ConfigDict()
    c.optim.plateau.factor = 0.1
    c.optim.plateau.patience = 15       # windows of `accumulation_size` steps (one window = one epoch)
    c.optim.plateau.accumulation_size = 1000
    c.optim.plateau.rtol = 1e-4
    c.optim.plateau.atol = 0.0
    c.optim.plateau.cooldown = 0
    c.optim.plateau.min_scale = 0.0
    c.optim.towers = ml_collections.ConfigDict()
    for t in ("audio_encoder", "caption_encoder", "logit_scale"):
        c.optim.towers[t] = ml_collections.ConfigDict({"lr_mult": 1.0, "freeze": False})
    # the captioner's towers (prefix_lm): audio encoder, mapper, GPT-2 with its LM head (msclap trains the mapper
    # alone: clap and gpt frozen, as configs/clapcap.py sets)
    for t in ("clap", "clap_project", "gpt"):
        c.optim.towers[t] = ml_collections.ConfigDict({"lr_mult": 1.0, "freeze": False})
    # LAION-CLAP's towers (configs/laion_clap.py keeps only these)
    for t in ("audio_branch", "text_branch", "audio_projection", "text_projection", "audio_transform",
              "text_transform", "logit_scale_a", "logit_scale_t"):
        c.optim.towers[t] = ml_collections.ConfigDict({"lr_mult": 1.0, "freeze": False})

    c.init = ml_collections.ConfigDict()
    c.init.clap_jax = placeholder(str)       # clap_jax run dir: params of its latest checkpoint
    c.init.msclap = placeholder(str)         # msclap CLAP_weights_2023.pth
    c.init.audio_encoder = placeholder(str)  # audio encoder only, from a clap_jax run dir, checkpoint dir or a
    #                                          msclap CLAP / captioner file (CLAP's audio tower <-> the captioner's)
    c.init.hf_gpt2 = placeholder(str)        # HF GPT-2 dir (model.safetensors / pytorch_model.bin)
    c.init.text_decoder = placeholder(str)   # GPT-2 only, from the same sources: CLAP's text tower <-> captioner's

    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.every_steps = 1000           # 0: only at the end
    c.ckpt.keep = 3
    c.ckpt.async_save = True
    c.ckpt.preemption_check_every = 0   # several processes: steps between the SIGTERM agreement (a collective
    #                                     that waits for the device); 0: auto, about every preemption_check_s of
    #                                     training. One process reads its own flag every step, for free
    c.ckpt.preemption_check_s = 2.0     # auto: target seconds between agreements (well inside a grace period)

    c.train = ml_collections.ConfigDict()
    c.train.compile_cache = True        # JAX's persistent compilation cache in <workdir>/jax_cache (a rerun or
    #                                     resume compiles from it); a cache dir set in JAX already is kept

    c.profile = ml_collections.ConfigDict()
    c.profile.steps = ()                # (first, last): a jax.profiler trace of those steps in <workdir>/profile
    #                                     (TensorBoard's profile tab); (): none

    c.debug = ml_collections.ConfigDict()
    c.debug.guard_host_reads = False    # steps with no planned host read run under
    #                                     jax.transfer_guard_device_to_host('disallow'): a stray read raises

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 0              # 0: never; else call the eval function every N steps
    c.eval.fn = placeholder(str)        # 'module:function', called as fn(variables, step) -> {name: value}
    c.eval.data_root = placeholder(str) # else: clap_jax.eval zero-shot tasks under this directory
    c.eval.tasks = "builtin"
    c.eval.batch_size = 32
    c.eval.heldout_batches = 0          # >0: the objective's loss on this many held-out global batches (the data's
    #                                     'eval' split; random data: another seed) at every eval step

    c.nan = ml_collections.ConfigDict()
    c.nan.max_consecutive = 10          # skipped (non-finite) steps in a row before the run stops
    return c


def field_paths(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted path of `c` (groups and leaves), e.g. ['seed', 'optim', 'optim.lr', ...]."""
    out = []
    for k, v in c.items():
        p = f"{prefix}{k}"
        out.append(p)
        if isinstance(v, ml_collections.ConfigDict):
            out += field_paths(v, p + ".")
    return out


def _likeness(a: str, b: str) -> float:
    """How alike two field names are: spelling, a prefix, or initials (learning_rate ~ lr)."""
    score = difflib.SequenceMatcher(None, a, b).ratio()
    if a.startswith(b) or b.startswith(a):
        score = max(score, 0.8)
    initials = lambda s: "".join(w[0] for w in s.split("_") if w)  # noqa: E731
    if "_" in a + b and (initials(a) == b or initials(b) == a):
        score = max(score, 0.9)
    return score


def nearest_field(path: str, known: list[str]) -> str | None:
    """The known path most like `path` (same group first: optim.lrr -> optim.lr), or None."""
    parent, _, leaf = path.rpartition(".")
    siblings = [k for k in known if k.rpartition(".")[0] == parent]
    if siblings:
        best = max(siblings, key=lambda k: _likeness(leaf, k.rpartition(".")[2]))
        if _likeness(leaf, best.rpartition(".")[2]) >= 0.6:
            return best
    match = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_field_message(path: str, known: list[str] | None = None) -> str:
    known = field_paths(base()) if known is None else known
    near = nearest_field(path, known)
    return f"unknown field {path}" + (f", did you mean {near}?" if near else " (see clap_jax/train/config.py)")


def check_known_fields(c: ml_collections.ConfigDict, where: str = "config") -> None:
    """Raise ConfigError for the first field of `c` that `base()` does not define; then lock `c`. The model's
    fields are those of its family's config (`config.model.family`)."""
    ref = base()
    family = c.get("model", {}).get("family") if isinstance(c.get("model"), ml_collections.ConfigDict) else None
    if family and family != ref.model.family:
        from clap_jax.models import registry

        ref.model = registry.default_config(family)
    known = field_paths(ref)
    known_set = set(known)
    for p in field_paths(c):
        if p not in known_set:
            raise ConfigError(f"{where}: {unknown_field_message(p, known)}")
    c.lock()


def parse_args(arg: str | None, defaults: Mapping[str, Any], where: str = "config") -> dict:
    """A config file's argument string -> {name: value} typed like `defaults`.

    `name=value` pairs and bare flags, comma-separated: a bare name sets a bool to True; ints, floats and strings
    are converted from the default's type; a tuple-typed name collects every value given for it, in order
    (`dirs=gs://a/x,dirs=gs://b/y`: no separator inside values, so URLs pass unharmed). An unknown name or a
    value of the wrong type raises ConfigError naming it."""
    out = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in defaults.items()}
    given_tuples = set()
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, has_value, value = item.partition("=")
        if name not in defaults:
            near = difflib.get_close_matches(name, list(defaults), n=1)
            raise ConfigError(f"{where}: unknown argument {name!r}" + (f", did you mean {near[0]!r}?" if near else "")
                              + f" (arguments: {', '.join(sorted(defaults))})")
        default = defaults[name]
        if isinstance(default, bool):
            if not has_value:
                out[name] = True
            elif value.lower() in ("1", "true", "yes"):
                out[name] = True
            elif value.lower() in ("0", "false", "no"):
                out[name] = False
            else:
                raise ConfigError(f"{where}: argument {name} takes no value or true/false, got {value!r}")
        elif not has_value:
            raise ConfigError(f"{where}: argument {name} needs a value ({name}=...)")
        elif isinstance(default, (tuple, list)):
            out[name] = (out[name] if name in given_tuples else ()) + ((value,) if value else ())
            given_tuples.add(name)   # `dirs=` alone gives an empty tuple
        else:
            try:
                out[name] = type(default)(value) if default is not None else value
            except ValueError:
                raise ConfigError(f"{where}: argument {name} must be a {type(default).__name__}, got {value!r}") \
                    from None
    return out


# ============================================================================================ value checks

def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None, data: bool = True) -> None:
    """Reject an invalid config before any compute with a ConfigError naming the field; unknown fields (typos)
    included. Locks the config: setting an unknown field afterwards raises too. `data=False` skips the checks of
    `config.data.*` sources (a compile-only run reads no data)."""
    check_known_fields(config)
    try:
        _validate_values(config, num_devices, data)
    except ConfigError:
        raise
    except ValueError as e:  # the model / optimizer / mesh checks name their field in a ValueError
        raise ConfigError(str(e)) from e


def _validate_values(config, num_devices, data=True):
    def need(ok, field, msg):
        if not ok:
            raise ConfigError(f"config.{field}: {msg}")

    model_config.validate(config.model)
    need(config.total_steps > 0, "total_steps", f"must be positive, got {config.total_steps}")
    need(config.batch_size > 0, "batch_size", f"must be positive, got {config.batch_size}")
    need(config.data.kind in ("random", "tfrecord"), "data.kind",
         f"unknown data kind {config.data.kind!r} ('random' or 'tfrecord')")
    clip, duration = config.data.get("clip_seconds"), config.model.audio.duration
    need(clip is None or clip == duration, "data.clip_seconds",
         f"{clip} s disagrees with config.model.audio.duration = {duration} s: the model config owns the clip "
         f"length (leave data.clip_seconds unset, or make the two equal)")
    if data and config.data.kind == "tfrecord":
        need(bool(config.data.dirs) or any(t.get("dirs") for t in (config.data.get("tasks") or ())), "data.dirs",
             "needs at least one directory of TFRecords (or config.data.tasks with dirs)")
        need(not config.data.weights or len(config.data.weights) == len(config.data.dirs), "data.weights",
             f"needs one weight per directory ({len(config.data.dirs)})")
        need(config.batch_size % jax.process_count() == 0, "batch_size",
             f"must be divisible by the number of processes ({jax.process_count()})")
        need(config.data.max_consecutive_bad_records >= 1, "data.max_consecutive_bad_records", "must be >= 1")
    from clap_jax.train import objective as objective_lib

    try:
        objective_lib.of(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    caption = config.model.get("caption")
    if caption is not None and caption.get("prefix_batch_norm", False):
        need(not objective_lib.frozen_audio(config), "model.caption.prefix_batch_norm",
             "needs the audio encoder to train (optim.towers.clap.freeze = False): its batch statistics are updated "
             "only in training mode, which a frozen audio encoder does not run")
    need(config.data.get("task_mix", "batch") in ("batch", "example"), "data.task_mix",
         f"unknown {config.data.get('task_mix')!r} ('batch': one task per batch, 'example': tasks mixed per record)")
    if config.data.get("tasks"):
        from clap_jax.data import multitask
        from clap_jax.errors import UserError

        tasks = []
        for i, t in enumerate(config.data.tasks):
            try:
                tasks.append(multitask.Task.from_config(dict(t)))
            except (UserError, TypeError) as e:
                raise ConfigError(f"config.data.tasks[{i}]: {e}") from None
        # the mixture is made of the slots with data: their weights must have a positive sum
        used = [t for t in tasks if t.dirs] if data and config.data.kind == "tfrecord" else tasks
        try:
            multitask.TaskSampler([t.weight for t in used])
        except UserError:
            raise ConfigError("config.data.tasks: the weights of the tasks " + (
                "with dirs " if used is not tasks else "") + f"({', '.join(f'{t.name}={t.weight:g}' for t in used)})"
                " must have a positive sum") from None
    need(config.loss.kind in ("global", "sharded"), "loss.kind", f"unknown {config.loss.kind!r} (global, sharded)")
    need(config.ckpt.every_steps >= 0, "ckpt.every_steps", "must be >= 0 (0 = only at the end)")
    need(config.ckpt.keep >= 1, "ckpt.keep", "must be >= 1")
    need(config.log.every_steps >= 1, "log.every_steps", "must be >= 1")
    need(config.data.num_workers >= -1, "data.num_workers", "must be >= 0, or -1 (auto)")
    need(config.data.prefetch >= 0, "data.prefetch", "must be >= 0")
    need(config.ckpt.preemption_check_every >= 0, "ckpt.preemption_check_every", "must be >= 0 (0 = auto)")
    need(config.ckpt.preemption_check_s > 0, "ckpt.preemption_check_s", "must be positive")
    prof = tuple(config.profile.steps or ())
    need(not prof or (len(prof) == 2 and 1 <= prof[0] <= prof[1]), "profile.steps",
         f"must be () or (first, last) with 1 <= first <= last, got {prof}")
    need(config.eval.every_steps >= 0, "eval.every_steps", "must be >= 0 (0 = never)")
    need(config.eval.heldout_batches >= 0, "eval.heldout_batches", "must be >= 0")
    need(config.nan.max_consecutive >= 1, "nan.max_consecutive", "must be >= 1")
    optim_lib.validate(config.optim)
    shd.validate_rules(config.sharding.rules)
    need(config.mesh.tensor == 1 and config.mesh.get("dcn_tensor", 1) == 1, "mesh.tensor",
         "tensor parallelism is not offered (must be 1): the model's state fits a chip and FSDP "
         "(config.mesh.fsdp) splits it further")
    need(config.sharding.max_replicated_mb >= 0, "sharding.max_replicated_mb", "must be >= 0")
    for key in ("clap_jax", "msclap", "hf_gpt2", "audio_encoder", "text_decoder"):
        path = config.init.get(key)
        if path and "://" not in str(path):
            need(os.path.exists(path), f"init.{key}", f"path does not exist: {path}")
    if config.eval.get("data_root") and "://" not in str(config.eval.data_root):
        need(os.path.isdir(config.eval.data_root), "eval.data_root", f"not a directory: {config.eval.data_root}")
    n = num_devices if num_devices is not None else jax.device_count()
    ici, dcn = shd.mesh_shape(config.mesh, n, int(np.prod([config.mesh.get(f"dcn_{a}", 1) for a in shd.AXES])))
    shards = (ici[0] * dcn[0]) * (ici[1] * dcn[1])
    accum = config.optim.grad_accum_steps
    need(config.batch_size % (shards * accum) == 0, "batch_size",
         f"{config.batch_size} must be divisible by batch shards ({shards} = data x fsdp) x "
         f"optim.grad_accum_steps ({accum})")


def check_data_dirs(config) -> None:
    """Every TFRecord directory exists and holds shards: a missing or empty one is reported now, before the
    compile, as a ConfigError naming it."""
    if config.data.kind != "tfrecord":
        return
    named = [("config.data.dirs", d) for d in config.data.dirs] + [
        (f"config.data.tasks[{i}] ({t.get('name', '?')}) dirs", d)
        for i, t in enumerate(config.data.get("tasks") or ()) for d in t.get("dirs", ())]
    for field, d in named:
        if not files.isdir(d):   # a local directory, or a bucket prefix holding objects
            raise ConfigError(f"{field}: {d}: not a directory (expected the --out of "
                              f"python -m clap_jax.data.preprocess)")
        try:
            pipeline.shard_paths(d)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{field}: {e}") from e
        stored = ((pipeline.read_metadata(d) or {}).get("settings") or {}).get("sample_rate")
        if stored is not None and stored != config.model.audio.sample_rate:
            raise ConfigError(f"{field}: {d} holds audio at {stored} Hz but config.model.audio.sample_rate "
                              f"is {config.model.audio.sample_rate} Hz: preprocess it with --sample-rate "
                              f"{config.model.audio.sample_rate}, or train a model at {stored} Hz")
