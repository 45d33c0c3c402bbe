"""`python -m clap_jax.train` given bad input: exit code 2, one `error:` line naming the file or field, and no
traceback (unless --debug). Most rows fail in the checks made before anything is compiled, so each takes a few
seconds; the bad-data row needs a compiled step (the stand-in model keeps it short)."""
import json
import os
import subprocess
import sys
import time

import pytest

from clap_jax.data import pipeline, tfrecord
from data_fixtures import make_tfrecord_dataset
from clap_jax.models import config as model_config

from _train_helpers import COMPILE_CACHE, ROOT, load_config, tree_digest

TINY = f"{ROOT}/configs/tiny.py"


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, CLAP_JAX_DEBUG="0",
                XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE)


def _run(args, entry=("-m", "clap_jax.train"), timeout=120):
    return subprocess.run([sys.executable, *entry, *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _error_line(r):
    """The run failed with exactly one `error:` line and no traceback; returns that line."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]




def _bad_config_file(tmp_path):
    p = tmp_path / "bad_cfg.py"
    p.write_text("import importlib.util\n"
                 f"spec = importlib.util.spec_from_file_location('tiny', {TINY!r})\n"
                 "tiny = importlib.util.module_from_spec(spec); spec.loader.exec_module(tiny)\n"
                 "def get_config(arg=''):\n"
                 "    c = tiny.get_config(arg)\n"
                 "    c.optim.learning_rate = 5.0  # a typo of optim.lr: must not be ignored\n"
                 "    return c\n")
    return str(p)


def _readonly_workdir(tmp_path):
    """A workdir whose nearest existing parent refuses new files (root ignores mode bits: use /sys there)."""
    if os.geteuid() == 0:
        return "/sys/clap_jax_test_run"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return str(ro / "run")


def _empty_dir(tmp_path):
    (tmp_path / "empty_data").mkdir()
    return str(tmp_path / "empty_data")


def _data_at_8khz(tmp_path):
    make_tfrecord_dataset(str(tmp_path / "data8k"), n=4, seconds=0.25, sample_rate=8000)
    return str(tmp_path / "data8k")


def _other_model_workdir(tmp_path):
    """A workdir recorded by a run of a different model (d_proj 48, not tiny's 32)."""
    from clap_jax.train import workdir

    wd = tmp_path / "other_model"
    (wd / "checkpoints").mkdir(parents=True)
    m = model_config.tiny()
    m.d_proj = 48
    workdir.write_workdir_model_config(str(wd), m)
    return str(wd)


# (name, args builder(tmp_path) -> argv, strings the error line must contain)
ROWS = [
    ("unknown_override", lambda t: [f"--config={TINY}", "--config.optim.lrr=1", f"--workdir={t}/wd"],
     ["unknown field optim.lrr", "did you mean optim.lr"]),
    ("unknown_field_in_file", lambda t: [f"--config={_bad_config_file(t)}", f"--workdir={t}/wd"],
     ["unknown field optim.learning_rate", "did you mean optim.lr"]),
    ("invalid_value", lambda t: [f"--config={TINY}", "--config.batch_size=12", f"--workdir={t}/wd"],
     ["config.batch_size"]),
    ("missing_config_file", lambda t: [f"--config={t}/nope.py", f"--workdir={t}/wd"], ["nope.py"]),
    ("workdir_is_a_file", lambda t: [f"--config={TINY}", f"--workdir={ROOT}/setup.py"],
     ["--workdir", "setup.py", "not a directory"]),
    ("workdir_read_only", lambda t: [f"--config={TINY}", f"--workdir={_readonly_workdir(t)}"],
     ["--workdir", "cannot write"]),
    ("missing_data_dir", lambda t: [f"--config={ROOT}/configs/demo.py:dirs={t}/no_such_data", f"--workdir={t}/wd"],
     ["data.dirs", "no_such_data", "not a directory"]),
    ("empty_data_dir", lambda t: [f"--config={ROOT}/configs/demo.py:dirs={_empty_dir(t)}", f"--workdir={t}/wd"],
     ["data.dirs", "empty_data", "no shards"]),
    ("clip_lengths_disagree", lambda t: [f"--config={TINY}", "--config.data.clip_seconds=2.0", f"--workdir={t}/wd"],
     ["config.data.clip_seconds", "2.0 s", "config.model.audio.duration = 1.0 s"]),
    ("data_rate_is_not_the_model_rate", lambda t: [f"--config={ROOT}/configs/demo.py:dirs={_data_at_8khz(t)}",
                                                   f"--workdir={t}/wd"],
     ["data8k holds audio at 8000 Hz", "config.model.audio.sample_rate is 16000 Hz"]),
    ("resume_other_model", lambda t: [f"--config={TINY}", f"--workdir={_other_model_workdir(t)}"],
     ["model_config.json", "model.d_proj: 48 (workdir) vs 32 (config)"]),
]


@pytest.mark.parametrize("name,argv,expect", ROWS, ids=[r[0] for r in ROWS])
def test_bad_invocation_is_one_line(name, argv, expect, tmp_path):
    args = argv(tmp_path)
    wd = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
    before = tree_digest(wd) if os.path.isdir(wd) else None
    t0 = time.time()
    line = _error_line(_run(args))
    for e in expect:
        assert e in line, (e, line)
    assert time.time() - t0 < 60  # refused before any compile
    if before is not None:  # a refused run leaves its workdir exactly as it was
        assert tree_digest(wd) == before


def test_debug_shows_the_traceback(tmp_path):
    r = _run([f"--config={TINY}", "--config.optim.lrr=1", "--debug"])
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_help_exits_zero():
    r = _run(["--help"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--workdir" in r.stdout and "--config" in r.stdout


@pytest.mark.parametrize("name,arg", [
    ("tiny", ""), ("tiny", "fsdp,sharded_loss,steps=20"),
    ("demo", ""), ("demo", "steps=300,batch=32,spec=256,mel=32,lr=1e-3,specaug,stft=fft"), ("demo", "random"),
    ("demo", "dirs=a:b"),
    ("clap_2023", ""), ("clap_2023", "fsdp,cosine,bf16,remat,batch_size=512,epochs=3"), ("clap_2023", "random"),
])
def test_shipped_configs_know_all_their_fields(name, arg):
    from clap_jax.train import config as config_lib

    c = load_config(name, arg)
    config_lib.check_known_fields(c)  # raises on a field base() does not define
    with pytest.raises(AttributeError):  # and locked: a typo set later raises too
        c.optim.lrr = 1.0


def _all_corrupt_data(d):
    """A dataset whose every record has a bad CRC (one flipped byte in each payload)."""
    make_tfrecord_dataset(d, 16, 0.25, 8000, examples_per_shard=8)
    for p in pipeline.shard_paths(d):
        with open(p, "r+b") as f:
            for off, n in tfrecord.read_index(p):
                pos = int(off) + 12 + int(n) // 2
                f.seek(pos)
                b = f.read(1)
                f.seek(pos)
                f.write(bytes([b[0] ^ 1]))


def test_all_corrupt_data_stops_with_one_line_and_few_warnings(tmp_path):
    data = str(tmp_path / "data")
    _all_corrupt_data(data)
    t0 = time.time()
    r = _run([f"--config={TINY}", "--config.data.kind=tfrecord", f"--config.data.dirs={data}",
              "--config.model.audio.duration=0.25", "--config.model.audio.sample_rate=8000",
              "--config.data.max_consecutive_bad_records=300", f"--workdir={tmp_path / 'wd'}"],
             entry=(os.path.join(ROOT, "tests", "_train_runner.py"),), timeout=240)
    line = _error_line(r)
    assert data in line and "bad records in a row" in line and "train-00000-of-00002.tfrecord" in line, line
    assert time.time() - t0 < 200
    warnings = [ln for ln in r.stderr.splitlines() if "bad record" in ln and not ln.startswith("error:")]
    assert 1 <= len(warnings) <= 10, warnings  # the first few, then (at most) a summary every 30 s
    recorded = json.load(open(tmp_path / "wd" / "model_config.json"))
    assert recorded["audio"]["sample_rate"] == 8000
