"""Checkpoints: one orbax `CheckpointManager` per run directory, two items per step.

    workdir/checkpoints/<step>/state/   train state (params, batch_stats, constants, optimizer state, counters),
                                        written by every process for its own shards (orbax, async)
    workdir/checkpoints/<step>/data/    data-iterator state, one JSON file per process
                                        (`process_<i>-of-<n>.json`, the same layout as Grain's own handler)

The iterator state is read *synchronously* when `save` is called (the iterator moves on while the array write
runs in the background), so a checkpoint at step N always pairs the state after N updates with the iterator
positioned after N batches. Exact resume follows: restore both and the run continues bit for bit.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


def _path(directory) -> epath.Path:
    """orbax wants absolute local paths: a relative one ('runs/x/checkpoints') is made absolute; URLs pass."""
    d = str(directory)
    return epath.Path(d if "://" in d else os.path.abspath(d))


# ------------------------------------------------------------------------------------- iterator-state item

class IteratorStateHandler(ocp.CheckpointHandler):
    """Writes/reads one JSON file per process holding a data iterator's `get_state()` snapshot (dict or bytes)."""

    def save(self, directory: epath.Path, args: "IteratorStateSave"):
        state = args.state
        payload = {"bytes": base64.b64encode(state).decode()} if isinstance(state, bytes) else {"json": state}
        fname = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        fname.write_text(json.dumps(payload, indent=1))

    def restore(self, directory: epath.Path, args: "IteratorStateRestore" = None):
        fname = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not fname.exists():
            raise FileNotFoundError(f"{fname}: no data-iterator state for this process (was the run saved with a "
                                    f"different number of processes?)")
        payload = json.loads(fname.read_text())
        return base64.b64decode(payload["bytes"]) if "bytes" in payload else payload["json"]

    def structure(self, directory):
        return None

    def metadata(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
    pass


# ------------------------------------------------------------------------------------------------ manager

_cpu_handler_set = False


def _no_replica_parallel_on_cpu() -> None:
    """orbax splits each replicated array across its replicas for saving ("replica-parallel", its default off
    GPU) by slicing it with a jitted `slice_in_dim`: one compilation per array shape, 13 s on the first save of
    the 8-simulated-device demo (~260 shapes), for no gain on one host's CPU. On CPU backends every replica
    lives in host memory, so one replica writes each shard instead (orbax's own choice on GPU). TPU keeps
    orbax's default."""
    global _cpu_handler_set
    if _cpu_handler_set or jax.devices()[0].platform != "cpu":
        return
    default = ocp.type_handlers.get_type_handler(jax.Array)
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=getattr(default, "_array_metadata_store", None)),
        override=True)
    _cpu_handler_set = True


def make_manager(directory: str, *, keep: int, save_every: int, async_save: bool = True) -> ocp.CheckpointManager:
    _no_replica_parallel_on_cpu()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(_path(directory), options=options, item_names=("state", "data"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None, *, force: bool = False) -> bool:
    """Save train state and (snapshot of) the iterator state at `step`. Returns whether a save was started."""
    if step in mngr.all_steps():
        return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data"] = IteratorStateSave(data_iter.get_state())
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any | None) -> Any:
    """Restore the state into the shardings of `abstract_state` (ShapeDtypeStructs); set the iterator's state."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    has_data = data_iter is not None and (epath.Path(mngr.directory) / str(step) / "data").exists()
    if has_data:
        items["data"] = IteratorStateRestore()
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    if has_data:
        data_iter.set_state(out["data"])
    return out["state"]


def restore_variables(directory: str, abstract: dict, step: int | None = None) -> dict:
    """Some top-level entries of a clap_jax checkpoint's train state (e.g. {'params': ..., 'batch_stats': ...},
    given as ShapeDtypeStructs with shardings), from its latest step unless given; nothing else is read."""
    directory = _path(directory)
    with ocp.CheckpointManager(directory, item_names=("state", "data")) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no clap_jax checkpoint under {directory}")
    path = directory / str(step) / "state"
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), abstract)
    with ocp.PyTreeCheckpointer() as ckptr:
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args,
                                                               partial_restore=True))


def restore_params(directory: str, abstract_params: Any, step: int | None = None) -> Any:
    """The params of a clap_jax checkpoint, placed with the shardings of `abstract_params`."""
    return restore_variables(directory, {"params": abstract_params}, step)["params"]
