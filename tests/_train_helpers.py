"""Shared helpers of the trainer tests: load configs/*.py, build the model under test, a tiny batch."""
import atexit
import hashlib
import importlib.util
import os
import shutil
import tempfile

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The trainer tests build the same small programs many times (each run jits its own step): a compilation cache,
# fresh per test session, lets identical programs compile once. Subprocess runs share it (see test_train_resume).
COMPILE_CACHE = tempfile.mkdtemp(prefix="clap_jax_train_tests_cache_")
atexit.register(shutil.rmtree, COMPILE_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def load_config(name: str, arg: str = ""):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def make_model(config, deterministic: bool = False):
    """The model the trainer tests run. `deterministic`: no dropout / augmentation, so that a float64
    reference draws no random numbers whose values depend on the dtype."""
    from _train_standin import StandInCLAP
    return StandInCLAP(dropout=0.0 if deterministic else 0.1)


def mesh(shape):
    from jax.sharding import Mesh
    return Mesh(np.asarray(jax.devices()[:8]).reshape(shape), ("data", "fsdp", "tensor"))


def tree_digest(d) -> str:
    """Names and contents of every file under `d`: equal digests mean nothing changed."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(d)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode() + open(p, "rb").read())
        h.update(repr(sorted(dirs)).encode())
    return h.hexdigest()


def builtin_data(tmp_path, sample_rate: int, num_train: int = 24, num_eval: int = 0) -> str:
    """The built-in synthetic dataset (0.5 s clips, 16-bit PCM, at `sample_rate`) written under `tmp_path`/data."""
    from clap_jax.data import synthetic

    data = str(tmp_path / "data")
    synthetic.write(data, num_train=num_train, num_eval=num_eval, seconds=0.5, sample_rate=sample_rate,
                    audio_format="pcm16", progress=False)
    return data


def first_batch(config) -> dict:
    """The first training batch the data pipeline of `config` makes, on its mesh."""
    from clap_jax.train import data as data_lib
    from clap_jax.train import sharding as shd

    return next(data_lib.make_data_iterator(config, shd.make_mesh(config.mesh)))


def train_and_check_resume(make_config, tmp_path, collections=("params", "batch_stats")) -> dict:
    """Trains `make_config(4)` in one run (`tmp_path`/a), and in another (`tmp_path`/b) `make_config(2)`, then
    `make_config(4)`, which must resume from the step-2 checkpoint and equal the first run bit for bit: the losses
    of steps 3 and 4 and the state's `collections` (None: all of it). Returns the first run's result, whose four
    losses are finite."""
    from clap_jax.train import train

    ref = train.train_and_evaluate(make_config(4), str(tmp_path / "a"))
    assert sorted(ref["losses"]) == [1, 2, 3, 4] and all(np.isfinite(v) for v in ref["losses"].values())
    train.train_and_evaluate(make_config(2), str(tmp_path / "b"))
    res = train.train_and_evaluate(make_config(4), str(tmp_path / "b"))
    assert res["start_step"] == 2 and sorted(res["losses"]) == [3, 4]
    for s in (3, 4):
        assert res["losses"][s] == ref["losses"][s], (s, res["losses"][s], ref["losses"][s])
    pick = (lambda state: state) if collections is None else (lambda state: [state[c] for c in collections])
    for a, b in zip(jax.tree.leaves(pick(res["state"])), jax.tree.leaves(pick(ref["state"]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return ref


def assert_clap_init_from(run_dir, prefix_lm_model, variables) -> None:
    """A tiny CLAP whose audio encoder is `config.init.audio_encoder = run_dir` (a prefix-LM run, e.g. HTSAT-22
    pretraining, with model config `prefix_lm_model`) starts from exactly that run's encoder `variables`; with
    caption.prefix_batch_norm, from the encoder whose embedding is the standardised one the run's mapper read."""
    from clap_jax.models import config as model_config
    from clap_jax.models import registry
    from clap_jax.train import state as state_lib

    clap = load_config("tiny")
    clap.model.audio = prefix_lm_model.audio
    clap.model.d_proj = prefix_lm_model.d_proj
    clap.init.audio_encoder = str(run_dir)
    state = state_lib.initial_variables(clap)
    want = {"params": variables["params"]["clap"], "batch_stats": variables["batch_stats"]["clap"]}
    if prefix_lm_model.caption.get("prefix_batch_norm", False):
        want["params"] = state_lib.fold_prefix_norm_into_projection(want["params"],
                                                                    variables["batch_stats"]["prefix_norm"])
        wav = np.random.default_rng(0).standard_normal((3, model_config.clip_samples(prefix_lm_model)))
        wav = (0.3 * wav).astype(np.float32)
        lm, cl = registry.build_model(prefix_lm_model), registry.build_model(clap.model)
        variables = {k: variables[k] for k in ("params", "batch_stats", "constants")}
        read = lm.apply(variables, wav, method=lambda m, w: m.prefix_norm(m.clap(w)["embedding"], True))
        got = cl.apply(state, wav, method=lambda m, w: m.encode_audio(w)["embedding"])
        np.testing.assert_allclose(np.asarray(got), np.asarray(read), rtol=1e-4, atol=1e-4)
    for coll in ("params", "batch_stats"):
        got, exp = jax.tree.leaves(state[coll]["audio_encoder"]), jax.tree.leaves(want[coll])
        assert len(got) == len(exp) > 0
        for a, b in zip(got, exp):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=0)
