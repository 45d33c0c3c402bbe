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
import errno
import json
import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from clap_jax.convert.workdir import orbax_path
from clap_jax.errors import UserError

log = logging.getLogger(__name__)


class DiskFullError(UserError):
    """A checkpoint could not be written for lack of space; the last complete checkpoint is intact."""


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
    """In object storage a step is final once its `commit_success.txt` is written (orbax's own choice on gs://,
    made here for s3:// too): a bucket has no rename, and the copy-and-delete orbax would do instead leaves a
    half-copied step that looks final if the process dies during it."""
    _no_replica_parallel_on_cpu()
    extra = {}
    if str(directory).startswith("s3://"):
        extra["temporary_path_class"] = ocp.path.atomicity.CommitFileTemporaryPath
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True,  # a save cut short (disk full, killed) leaves a tmp dir: removed at restart
        **extra)
    return ocp.CheckpointManager(orbax_path(directory), options=options, item_names=("state", "data"))


def _disk_full(e: BaseException) -> BaseException | None:
    """The ENOSPC error in `e`'s chain (orbax re-raises its writer threads' errors, tensorstore as text), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return e
        e = e.__cause__ or e.__context__
    return None


def _raise_if_disk_full(mngr: ocp.CheckpointManager, e: BaseException, step: int | None) -> None:
    full = _disk_full(e)
    if full is None:
        return
    directory = str(mngr.directory)
    for name in os.listdir(directory) if os.path.isdir(directory) else ():  # the partial save: free its space
        if ".orbax-checkpoint-tmp" in name and (step is None or name.startswith(f"{step}.")):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    try:
        last = max((s for s in mngr.all_steps() if s != step), default=None)
    except Exception:  # noqa: BLE001 - only for the message
        last = None
    where = f" ({full.filename})" if getattr(full, "filename", None) else ""
    kept = f"the last complete checkpoint (step {last}) is kept: rerun to resume from it" if last is not None \
        else "no complete checkpoint was written yet"
    raise DiskFullError(f"no space left on the device holding {directory}{where} while saving the checkpoint"
                        f"{f' of step {step}' if step is not None else ''}; free some space; {kept}") from e


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None, *, force: bool = False,
         data_state: Any = None) -> bool:
    """Save train state and (snapshot of) the iterator state at `step` (`data_state`: a snapshot taken
    earlier, else `data_iter.get_state()` now). Returns whether a save was started. Disk full (now, or in the
    previous async save) raises DiskFullError; the last complete checkpoint stays."""
    if step in mngr.all_steps():
        return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data"] = IteratorStateSave(data_iter.get_state() if data_state is None else data_state)
    try:
        return mngr.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:
        _raise_if_disk_full(mngr, e, step)
        raise


def finish(mngr: ocp.CheckpointManager) -> None:
    """Wait for the background save and close the manager (disk full there raises DiskFullError too)."""
    try:
        mngr.wait_until_finished()
    except Exception as e:
        _raise_if_disk_full(mngr, e, None)
        raise
    finally:
        try:
            mngr.close()
        except Exception as e:  # noqa: BLE001 - the wait's error (if any) is the one to report
            log.warning("closing the checkpoint manager: %s", e)


def saved_data_state(mngr: ocp.CheckpointManager, step: int) -> Any | None:
    """This process's data-iterator state saved at `step` (None if that checkpoint has none), read without
    restoring anything (to build the iterator the state fits before restoring)."""
    try:
        return IteratorStateHandler().restore(epath.Path(mngr.directory) / str(step) / "data")
    except FileNotFoundError:
        return None


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
