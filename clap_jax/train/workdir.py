"""The run directory (`--workdir`) before and after the trainer builds anything.

A run records its model config in `<workdir>/model_config.json` (once, when it starts); `clap_jax.convert` reads it
to rebuild the model, and a resume is refused when the recorded model differs from the config's, because the
checkpoints could not be loaded into it. `check_workdir` runs before any compile and changes nothing.
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections

from clap_jax import files
from clap_jax.convert import workdir as convert_workdir
from clap_jax.convert.tree import config_to_json
from clap_jax.errors import ConfigError, UserError
from clap_jax.models import registry

WORKDIR_CONFIG_FILE = convert_workdir.CONFIG_FILE  # the model config of a run; clap_jax.convert.workdir reads it


def _flatten_dict(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _model_dict(model_cfg) -> dict:
    """The model config as the JSON in the workdir holds it (tuples as lists)."""
    return json.loads(json.dumps(model_cfg.to_dict(), default=list))


def model_config_diff(recorded: dict, model_cfg) -> list[str]:
    """'field: recorded vs new' for every model field that differs. Fields the recorded file lacks (written by an
    older version) take the family's defaults, as clap_jax.convert does when it reads the file."""
    try:
        defaults = registry.default_config(recorded.get("family", model_cfg.get("family")))
    except ValueError:   # a family this version does not know: every recorded field counts as it is
        defaults = ml_collections.ConfigDict()
    old = _flatten_dict(_model_dict(defaults))
    old.update(_flatten_dict(recorded))
    new = _flatten_dict(_model_dict(model_cfg))
    return [f"model.{k}: {old.get(k, '<absent>')!r} (workdir) vs {new.get(k, '<absent>')!r} (config)"
            for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k, "<absent>")]


def check_workdir(config, workdir: str | None) -> None:
    """Before anything is built or written: `workdir` is a directory we can write to (or can be created), and a
    run already recorded there was trained with the same model config. Raises a one-line UserError/ConfigError;
    the workdir is left as it was (a probe file is created and removed)."""
    if workdir is None:
        return
    url = files.is_url(workdir)
    if (files.isfile(workdir) if url else os.path.exists(workdir) and not os.path.isdir(workdir)):
        raise UserError(f"--workdir {workdir}: exists and is not a directory; pass a directory (new or a run's)")
    recorded = files.join(workdir, WORKDIR_CONFIG_FILE)
    if files.isfile(recorded):
        try:
            old = json.loads(files.read_text(recorded))
        except (OSError, ValueError) as e:
            raise UserError(f"{recorded}: unreadable ({e}); this workdir's model config is unknown, so it cannot be "
                            f"resumed") from e
        diff = model_config_diff(old, config.model)
        if diff:
            raise ConfigError(
                f"{recorded}: this workdir holds a run of a different model, which a resume cannot load; "
                f"{len(diff)} field(s) differ: {'; '.join(diff[:8])}{'; ...' if len(diff) > 8 else ''}. "
                f"Use a new --workdir, or the recorded model config")
    if url:   # a bucket: access shows at the first write (model_config.json), before any compile
        return
    probe_dir = workdir
    while not os.path.isdir(probe_dir):  # the nearest existing ancestor, where makedirs will write
        parent = os.path.dirname(os.path.abspath(probe_dir))
        if os.path.exists(probe_dir) or parent == os.path.abspath(probe_dir):
            raise UserError(f"--workdir {workdir}: {probe_dir} is not a directory")
        probe_dir = parent
    probe = os.path.join(probe_dir, f".clap_jax_write_probe.{os.getpid()}.{jax.process_index()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--workdir {workdir}: cannot write to {probe_dir} ({e.strerror}); pass a writable "
                        f"directory") from e


def write_workdir_model_config(workdir: str, model_cfg) -> None:
    """Record the run's model config (atomically; only once: check_workdir makes sure it matches)."""
    path = files.join(workdir, WORKDIR_CONFIG_FILE)
    if files.isfile(path):
        return
    files.write_text(path, config_to_json(model_cfg))
