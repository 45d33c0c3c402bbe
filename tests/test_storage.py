"""Object storage end to end over real protocols on loopback: the GCS emulator (gcp-storage-emulator, JSON API,
as gcsfs and tensorstore's gcs driver speak it) and moto's S3 server (boto/s3fs and tensorstore's s3 driver).

- the path layer: atomic single-put writes, listing, ranged reads through the block cache (few requests);
- data dirs given as URLs survive the config's argument parsing;
- preprocessing writes its shards into a bucket, and the Grain source reads every record back from it, equal to
  the local preprocessing's;
- the trainer (CLI subprocess, stand-in model, 8 CPU devices) with data and workdir in a gs:// and in an s3://
  bucket: killed -9 after a checkpoint, restarted, its losses equal an uninterrupted run's (local data and
  workdir) bit for bit;
- python -m clap_jax.convert and python -m clap_jax.eval read and write gs:// and s3:// paths.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from clap_jax import files
from clap_jax.data import pipeline, preprocess
from clap_jax.train.config import parse_args

from _storage_servers import storage_servers
from _train_helpers import COMPILE_CACHE, ROOT
from data_fixtures import make_manifest_dataset

RATE, SECONDS = 8000, 0.5


@pytest.fixture(scope="module")
def servers():
    with storage_servers() as s:
        yield s


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    return str(d), make_manifest_dataset(str(d), 32, SECONDS, RATE, "toy", 0)


def _preprocess(raw, out):
    root, man = raw
    opts = preprocess.Options(sample_rate=RATE, audio_format="pcm16", examples_per_shard=8, min_seconds=0.01)
    return preprocess.run([man], out, root=root, opts=opts, workers=1, progress=False)


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_path_layer_atomic_put_listing_and_block_cached_ranged_reads(servers, scheme):
    base = f"{servers[scheme]}/layer"
    files.write_text(f"{base}/a/x.json", '{"k": 1}')
    files.write_bytes(f"{base}/a/blob", bytes(range(256)) * 4096)   # 1 MiB
    assert files.listdir(f"{base}/a") == ["blob", "x.json"] and files.isdir(f"{base}/a")
    assert files.listdir(f"{base}/none") == [] and not files.isdir(f"{base}/none")
    assert json.loads(files.read_text(f"{base}/a/x.json")) == {"k": 1}
    with pytest.raises(RuntimeError):   # a failed write leaves the old object whole, and nothing temporary
        with files.atomic_path(f"{base}/a/x.json") as tmp:
            open(tmp, "w").write("partial")
            raise RuntimeError
    assert json.loads(files.read_text(f"{base}/a/x.json")) == {"k": 1} and len(files.listdir(f"{base}/a")) == 2
    want = bytes(range(256)) * 4096
    r = files.RangeReader(f"{base}/a/blob", block_size=64 << 10, cache_blocks=4)
    rng = np.random.default_rng(0)
    for off in sorted(rng.integers(0, len(want) - 5000, 200)):   # in order, as a shard's records are read
        assert r.read(int(off), 3000) == want[off:off + 3000]
    assert r.read(len(want) - 10, 100) == want[-10:] and r.read(len(want), 5) == b""
    assert r.requests <= len(want) // (64 << 10) + 1, r.requests   # one request per block, not per read
    files.rmtree(base)
    assert not files.exists(f"{base}/a/blob")


def test_url_data_dirs_survive_config_parsing():
    args = parse_args("dirs=gs://b/x/tfr,dirs=s3://c/y,steps=3", {"dirs": (), "steps": 1}, "configs/t.py")
    assert args == {"dirs": ("gs://b/x/tfr", "s3://c/y"), "steps": 3}
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    from _train_helpers import load_config
    c = load_config("tiny", "dirs=gs://b/x,dirs=s3://c/y,rate=8000")
    assert c.data.kind == "tfrecord" and tuple(c.data.dirs) == ("gs://b/x", "s3://c/y")
    assert c.model.audio.sample_rate == 8000


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_preprocess_into_bucket_and_grain_source_reads_it(servers, raw, tmp_path, scheme):
    url = f"{servers[scheme]}/prep"
    meta = _preprocess(raw, url)
    local = _preprocess(raw, str(tmp_path / "local"))
    assert meta["splits"] == local["splits"] and meta["num_examples"] == 32
    names = files.listdir(url)
    assert "dataset.json" in names and not [n for n in names if ".tmp-" in n]
    src, ref = (pipeline.TFRecordDataSource(pipeline.shard_paths(d)) for d in (url, str(tmp_path / "local")))
    assert len(src) == len(ref) == 32
    for i in range(len(src)):
        assert bytes(src[i]) == bytes(ref[i])
    assert src.num_corrupt == 0
    # a rerun finds the finished shards in the bucket and rewrites nothing
    before = {n: files.read_bytes(f"{url}/{n}") for n in names if n.endswith(".tfrecord")}
    assert _preprocess(raw, url)["splits"] == meta["splits"]
    assert {n: files.read_bytes(f"{url}/{n}") for n in before} == before
    # a flipped byte inside a record of a bucket shard: the ranged read's CRC check skips and counts it
    shard = pipeline.shard_paths(url)[1]
    data = bytearray(files.read_bytes(shard))
    data[len(data) // 2] ^= 0xFF
    files.write_bytes(shard, bytes(data))
    src = pipeline.TFRecordDataSource(pipeline.shard_paths(url))
    got = [src[i] for i in range(len(src))]
    assert src.num_corrupt == 1 and sum(g is None for g in got) == 1
    assert [bytes(g) for g in got if g is not None] == [bytes(ref[i]) for i in range(32) if got[i] is not None]


# ------------------------------------------------------------------------------------------------ trainer

STEPS = 6


def _start(servers, data, workdir, out, steps=STEPS):
    cmd = [sys.executable, os.path.join(ROOT, "tests", "_train_runner.py"),
           f"--config={ROOT}/configs/tiny.py:ckpt_every=2,dirs={data},rate={RATE},seconds={SECONDS}",
           f"--config.total_steps={steps}", f"--workdir={workdir}", f"--losses_out={out}"]
    env = dict(os.environ, **servers["env"], JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p, timeout=240):
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    return out


def _losses(path):
    d = json.loads(open(path).read())
    return {int(k): v for k, v in d["losses"].items()}, d


def _final_steps(workdir):
    """Finished checkpoints in a bucket workdir: orbax marks them with commit_success.txt."""
    d = f"{workdir}/checkpoints"
    return sorted(int(n) for n in files.listdir(d) if n.isdigit() and files.exists(f"{d}/{n}/commit_success.txt"))


@pytest.fixture(scope="module")
def reference(servers, raw, tmp_path_factory):
    """An uninterrupted run on local data and a local workdir."""
    d = tmp_path_factory.mktemp("ref")
    _preprocess(raw, str(d / "data"))
    _finish(_start(servers, d / "data", d / "wd", d / "losses.json"))
    losses, meta = _losses(d / "losses.json")
    assert sorted(losses) == list(range(1, STEPS + 1)) and meta["stopped"] == "done"
    return losses


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_train_in_bucket_kill9_resume_is_bit_exact(servers, raw, reference, tmp_path, scheme):
    data, wd = f"{servers[scheme]}/train/data", f"{servers[scheme]}/train/wd"
    _preprocess(raw, data)
    p = _start(servers, data, wd, tmp_path / "a.json")
    t0 = time.time()
    while not _final_steps(wd):
        assert p.poll() is None, "run ended before a checkpoint: " + p.stdout.read()[-3000:]
        assert time.time() - t0 < 240, "no checkpoint in time"
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    kept = _final_steps(wd)
    assert kept and kept[-1] < STEPS, kept
    out = _finish(_start(servers, data, wd, tmp_path / "b.json"))
    lb, mb = _losses(tmp_path / "b.json")
    assert mb["start_step"] == kept[-1] and mb["end_step"] == STEPS, (mb, kept, out[-2000:])
    assert lb and all(lb[s] == reference[s] for s in lb), {s: (lb[s], reference[s]) for s in lb}
    names = files.listdir(wd)
    assert "model_config.json" in names and any(n.startswith("events.out.tfevents") for n in names), names
    assert _final_steps(wd)[-1] == STEPS


# ------------------------------------------------------------------------------------------ convert, eval

def _tiny_variables(cfg) -> dict:
    """Random weights of `cfg`'s shapes with the real STFT/mel constants, drawn in numpy (the model's own init
    compiles for a minute on a busy 2-core machine)."""
    from clap_jax.audio import frontend
    from clap_jax.models import registry

    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.02).astype(s.dtype),
                     registry.variable_shapes(cfg))
    a = cfg.audio
    real, imag = frontend.stft_kernels(a.n_fft)
    v["constants"]["audio_encoder"]["base"] = {
        "stft_real": np.asarray(real, np.float32), "stft_imag": np.asarray(imag, np.float32),
        "melW": np.asarray(frontend.mel_filterbank(a.mel_sr, a.n_fft, a.mel_bins, a.fmin, a.fmax), np.float32)}
    bn = v["batch_stats"]["audio_encoder"]["base"]["bn0"]
    bn["mean"], bn["var"] = np.zeros_like(bn["mean"]), np.ones_like(bn["var"])
    return v


def test_convert_and_eval_read_and_write_buckets(servers, tmp_path):
    from clap_jax.convert import __main__ as convert_cli
    from clap_jax.convert import load_weights, save_checkpoint
    from clap_jax.eval import __main__ as eval_cli
    from clap_jax.models import registry

    import eval_fixtures as fx

    cfg = registry.model_config("msclap-2023-tiny")
    cfg.audio.sample_rate, cfg.audio.duration = 16000, 0.5
    variables = _tiny_variables(cfg)
    save_checkpoint(str(tmp_path / "ckpt"), variables, cfg)
    gs_ckpt = f"{servers['gs']}/conv/ckpt"
    files.upload(str(tmp_path / "ckpt"), gs_ckpt)
    pth = f"{servers['s3']}/conv/out.pth"
    assert convert_cli.main(["jax-to-msclap", gs_ckpt, pth]) == 0
    assert files.isfile(pth) and files.isfile(f"{servers['s3']}/conv/out.safetensors")
    back = f"{servers['s3']}/conv/back"
    assert convert_cli.main(["msclap-to-jax", pth, back]) == 0
    assert sorted(files.listdir(back)) == ["config.json", "model.safetensors"]
    got, _ = load_weights(back)
    for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(Exception, match="exists"):   # no silent overwrite of a bucket object
        convert_cli.main(["jax-to-msclap", gs_ckpt, pth])

    fx.builtin(fx.Writer(tmp_path / "evaldata"))
    out = f"{servers['gs']}/conv/eval"
    rc = eval_cli.main(["--weights", back, "--data-root", str(tmp_path / "evaldata"), "--out", out, "--tasks",
                        "builtin", "--no-cache", "--no-progress", "--workers", "1"])
    assert rc == 0
    assert sorted(files.listdir(out)) == ["report.md", "report.png", "results.json"]
    res = json.loads(files.read_text(f"{out}/results.json"))
    assert res["weights"] == back and res["tasks"], res.get("tasks")
