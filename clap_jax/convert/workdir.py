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

from clap_jax import files
from clap_jax.convert.checkpoint import read_config
from clap_jax.convert.tree import CheckpointError, check_finite_tree
from clap_jax.models import registry

CONFIG_FILE = "model_config.json"
CHECKPOINTS = "checkpoints"
STATE_ITEM = "state"


def orbax_path(directory) -> epath.Path:
    """orbax wants absolute local paths: a relative one ('runs/x/checkpoints') is made absolute; URLs pass
    (gs:// through tensorstore's gcs driver, s3:// through its s3 driver: see `enable_orbax_s3`)."""
    d = str(directory)
    if d.startswith("s3://"):
        enable_orbax_s3()
    return epath.Path(d if "://" in d else os.path.abspath(d))


_S3_READY = False


def _s3_kvstore(path: str) -> dict:
    """The tensorstore kvstore spec of `s3://bucket/key`; endpoint and region from the environment, as boto3
    reads them (AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION), credentials from tensorstore's default chain
    (environment, ~/.aws, instance metadata)."""
    bucket, _, key = str(path)[len("s3://"):].partition("/")
    spec = {"driver": "s3", "bucket": bucket, "path": key}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        spec["endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        spec["aws_region"] = region
    return spec


def enable_orbax_s3() -> None:
    """Let orbax write and read array data on s3:// through tensorstore's s3 kvstore driver.

    orbax-checkpoint routes only gs:// URLs to a cloud kvstore driver; any other path must be an absolute local
    one. Its metadata files already go through etils.epath (fsspec, s3fs). This adds s3:// beside gs:// in the
    two places orbax chooses the array kvstore (its path normalisation and the GCS-or-file choice), and does
    nothing when the installed orbax already accepts s3:// there."""
    global _S3_READY
    if _S3_READY:
        return
    from orbax.checkpoint._src.path import gcs_utils
    from orbax.checkpoint._src.serialization import tensorstore_utils as tsu

    try:
        spec = tsu.build_kvstore_tspec("s3://probe-bucket/x", use_ocdbt=False)
        native = isinstance(spec, dict) and spec.get("driver") == "s3"
    except Exception:  # noqa: BLE001 - "Checkpoint path should be absolute": no s3 support
        native = False
    if not native:
        normalize, use_cloud, kvstore_for = tsu._normalize_path, tsu._use_gcs_driver, gcs_utils.get_kvstore_for_gcs

        def _normalize_path(path: str) -> str:
            if str(path).startswith("s3://"):
                return "s3://" + os.path.normpath(str(path)[len("s3://"):])
            return normalize(path)

        def _use_gcs_driver(directory: str) -> bool:
            return str(directory).startswith("s3://") or use_cloud(directory)

        def get_kvstore_for_gcs(path: str) -> dict:
            return _s3_kvstore(path) if str(path).startswith("s3://") else kvstore_for(path)

        tsu._normalize_path, tsu._use_gcs_driver = _normalize_path, _use_gcs_driver
        gcs_utils.get_kvstore_for_gcs = get_kvstore_for_gcs
    _S3_READY = True


def is_workdir(directory: str) -> bool:
    return files.isfile(files.join(directory, CONFIG_FILE))


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
