"""Training work directories as a weights source: `DIR/model_config.json` (the run's model config) and the orbax
checkpoints in `DIR/checkpoints/<step>/state` (the train state; only params, batch_stats and constants are read).

    python -m clap_jax.train --workdir DIR ...      # writes it
    CLAP("DIR"), python -m clap_jax.eval --weights DIR, python -m clap_jax.convert jax-to-msclap DIR out.pth
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from clap_jax.convert.checkpoint import read_config
from clap_jax.convert.tree import CheckpointError, check_finite_tree
from clap_jax.models import registry

CONFIG_FILE = "model_config.json"
CHECKPOINTS = "checkpoints"
STATE_ITEM = "state"


def orbax_path(directory) -> epath.Path:
    """orbax wants absolute local paths: a relative one ('runs/x/checkpoints') is made absolute; URLs pass."""
    d = str(directory)
    return epath.Path(d if "://" in d else os.path.abspath(d))


def is_workdir(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, CONFIG_FILE))


def latest_step(checkpoints_dir: str) -> int | None:
    """The newest finished checkpoint's step (orbax's own bookkeeping: partial saves do not count)."""
    with ocp.CheckpointManager(orbax_path(checkpoints_dir), item_names=(STATE_ITEM, "data")) as mngr:
        return mngr.latest_step()


def restore_variables(checkpoints_dir: str, abstract: dict, step: int | None = None) -> dict:
    """Some top-level entries of a training checkpoint's state (e.g. {'params': ..., 'batch_stats': ...}, given as
    ShapeDtypeStructs with shardings), from its latest step unless given; nothing else is read."""
    step = latest_step(checkpoints_dir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no clap_jax checkpoint under {checkpoints_dir}")
    path = orbax_path(checkpoints_dir) / str(step) / STATE_ITEM
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), abstract)
    with ocp.PyTreeCheckpointer() as ckptr:
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args,
                                                               partial_restore=True))


def load_workdir(workdir: str, step: int | None = None):
    """Training workdir -> (variables, config) of its newest checkpoint (or `step`), on this host's first device."""
    cfg = read_config(os.path.join(workdir, CONFIG_FILE))
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev),
                            dict(registry.variable_shapes(cfg)))
    try:
        variables = restore_variables(os.path.join(workdir, CHECKPOINTS), abstract, step)
    except FileNotFoundError as e:
        raise CheckpointError(f"{workdir}: a training workdir without checkpoints ({e}); has training saved a "
                              f"step yet?") from e
    variables = jax.device_get(variables)
    check_finite_tree(variables, f"{workdir} (step {step if step is not None else 'latest'})")
    return variables, cfg
