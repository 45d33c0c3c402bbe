"""The user-facing CLAP class and the CLIs, on a tiny model whose weights come from msclap's real code."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from clap_jax.audio import io as audio_io
from clap_jax.convert import msclap as cv
from clap_jax.inference import CLAP
from conftest import rel_err
from msclap_oracle import msclap_audio_outputs, msclap_text_embeddings


@pytest.fixture(scope="module")
def clap(tiny_cfg, tiny_msclap_state):
    return CLAP(variables=cv.from_msclap_state_dict(tiny_msclap_state, tiny_cfg), config=tiny_cfg, batch_size=4)


@pytest.fixture(scope="module")
def pth(tiny_msclap_state, tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in tiny_msclap_state.items()}}, path)
    return str(path)


def test_paths_and_arrays_give_msclap_embeddings(clap, tiny_msclap, tmp_path):
    rng = np.random.default_rng(0)
    wavs = [(rng.standard_normal(308700) * 0.2).astype(np.float32) for _ in range(3)]
    files = []
    for i, w in enumerate(wavs):
        files.append(str(tmp_path / f"c{i}.wav"))
        sf.write(files[-1], w, 44100, subtype="FLOAT")
    from_files = clap.get_audio_embeddings(files)
    from_arrays = clap.get_audio_embeddings(wavs, sample_rate=44100)
    np.testing.assert_array_equal(from_files, from_arrays)
    ref = msclap_audio_outputs(tiny_msclap, np.stack(wavs))["embedding"]
    assert from_files.shape == (3, clap.config.d_proj)
    assert rel_err(from_files, ref) < 1e-4
    texts = ["a dog", "rain on a roof!"]
    assert rel_err(clap.get_text_embeddings(texts), msclap_text_embeddings(tiny_msclap, texts)) < 1e-4


def test_batching_does_not_change_results(clap):
    rng = np.random.default_rng(1)
    wavs = [(rng.standard_normal(44100 * 2) * 0.1).astype(np.float32) for _ in range(5)]
    a = clap.get_audio_embeddings(wavs, sample_rate=44100, batch_size=8)
    b = clap.get_audio_embeddings(wavs, sample_rate=44100, batch_size=16)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    texts = [f"sound number {i}" for i in range(11)]
    np.testing.assert_allclose(clap.get_text_embeddings(texts, batch_size=8),
                               clap.get_text_embeddings(texts, batch_size=16), rtol=1e-5, atol=1e-6)


def test_cpu_micro_batches_split_big_batches_and_change_nothing(tiny_cfg, tiny_msclap_state, clap):
    """On one CPU device the towers run on micro-batches whatever batch_size says (forced on here, where the
    tests' 8 simulated devices make the cap one row per device); the embeddings are those of one big batch."""
    micro = CLAP(variables=cv.from_msclap_state_dict(tiny_msclap_state, tiny_cfg), config=tiny_cfg, batch_size=64,
                 cpu_micro_batches=True)
    rows = []
    put = micro._put_batch
    micro._put_batch = lambda x: (rows.append(x.shape[0]), put(x))[1]
    rng = np.random.default_rng(3)
    wavs = [(rng.standard_normal(44100 * 2) * 0.1).astype(np.float32) for _ in range(11)]
    a = micro.get_audio_embeddings(wavs, sample_rate=44100)
    assert set(rows) == {max(8, micro._mesh.size)} and len(rows) == 2      # 11 clips -> 2 calls of 8 rows
    np.testing.assert_allclose(a, clap.get_audio_embeddings(wavs, sample_rate=44100), rtol=1e-5, atol=1e-6)
    texts = [f"sound number {i}" for i in range(20)]
    rows.clear()
    t = micro.get_text_embeddings(texts)
    assert rows == [16] * 4                 # 20 captions -> 2 calls of 16 rows, ids and mask each
    np.testing.assert_allclose(t, clap.get_text_embeddings(texts), rtol=1e-5, atol=1e-6)
    off = CLAP(variables=micro.variables, config=tiny_cfg, batch_size=64, cpu_micro_batches=False)
    assert not off._micro


def test_bfloat16_inference_stays_close_to_float32(tiny_cfg, tiny_msclap_state, clap, tmp_path):
    bf = CLAP(variables=cv.from_msclap_state_dict(tiny_msclap_state, tiny_cfg), config=tiny_cfg, batch_size=4,
              dtype="bfloat16")
    assert bf.config.dtype == "bfloat16" and tiny_cfg.dtype == "float32"
    rng = np.random.default_rng(4)
    wavs = [(rng.standard_normal(44100 * 3) * 0.1).astype(np.float32) for _ in range(6)]
    texts = ["a dog barking", "rain on a tin roof", "a siren far away"]
    for x32, x16 in ((clap.get_audio_embeddings(wavs, sample_rate=44100), bf.get_audio_embeddings(wavs, 44100)),
                     (clap.get_text_embeddings(texts), bf.get_text_embeddings(texts))):
        assert x16.dtype == np.float32 and not np.array_equal(x16, x32)     # computed in bfloat16, returned f32
        cos = np.sum(x16 * x32, 1) / (np.linalg.norm(x16, axis=1) * np.linalg.norm(x32, axis=1))
        assert cos.min() > 0.98, cos
    from clap_jax.convert import checkpoint
    from clap_jax.eval.__main__ import load_embedder

    ckpt = checkpoint.save_checkpoint(str(tmp_path / "ckpt"), clap.variables, tiny_cfg)
    f32, b16 = load_embedder(ckpt), load_embedder(ckpt, dtype="bfloat16")
    assert b16.config.dtype == "bfloat16" and b16.cache_id == f32.cache_id + "-bfloat16"   # cached apart


def test_channels_resampling_and_cropping():
    rng = np.random.default_rng(2)
    stereo = rng.standard_normal((2, 1000)).astype(np.float32)
    np.testing.assert_allclose(audio_io.load_clip(stereo, 44100, 44100, 1000), stereo.mean(0), rtol=1e-6)
    concat = audio_io.load_clip(stereo, 44100, 44100, 2000, channel_mode="concat")
    np.testing.assert_array_equal(concat, stereo.reshape(-1))                  # msclap's channel concatenation
    # (samples, channels) layout is recognised
    np.testing.assert_allclose(audio_io.load_clip(stereo.T, 44100, 44100, 1000), stereo.mean(0), rtol=1e-6)
    # repeat-padding (msclap): tiled, no zeros
    short = np.arange(1, 4, dtype=np.float32)
    np.testing.assert_array_equal(audio_io.fit_length(short, 7), [1, 2, 3, 1, 2, 3, 1])
    long = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(audio_io.fit_length(long, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(audio_io.fit_length(long, 4, "start"), [0, 1, 2, 3])
    r1 = audio_io.fit_length(long, 4, "random", np.random.default_rng(5))
    r2 = audio_io.fit_length(long, 4, "random", np.random.default_rng(5))
    np.testing.assert_array_equal(r1, r2)
    # resampling: a 1 kHz tone at 16 kHz stays a 1 kHz tone at 44.1 kHz
    t = np.arange(16000) / 16000
    y = audio_io.load_clip(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 16000, 44100, 44100)
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 44100 / len(y) - 1000) < 2


def test_bad_audio_is_named(clap, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00not really audio")
    with pytest.raises(audio_io.AudioError, match="broken.wav"):
        clap.get_audio_embeddings([str(bad)])
    with pytest.raises(audio_io.AudioError, match="arrays need a sample_rate"):
        clap.get_audio_embeddings([np.zeros(100, np.float32)])
    with pytest.raises(audio_io.AudioError, match="NaN/inf"):
        clap.get_audio_embeddings([np.full(100, np.nan, np.float32)], sample_rate=44100)


def test_similarity_and_classify(clap):
    rng = np.random.default_rng(3)
    wavs = [(rng.standard_normal(44100) * 0.1).astype(np.float32) for _ in range(2)]
    a = clap.get_audio_embeddings(wavs, sample_rate=44100)
    t = clap.get_text_embeddings(["dog", "rain", "siren"])
    sim = clap.compute_similarity(a, t)
    assert sim.shape == (2, 3)
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    np.testing.assert_allclose(sim, clap.logit_scale * cos, rtol=1e-5)
    assert abs(clap.logit_scale - np.exp(3.1)) < 1e-4  # the oracle's logit scale
    probs = clap.classify(wavs, ["dog", "rain", "siren"], sample_rate=44100)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1), clap.compute_similarity(
        a, clap.get_text_embeddings(["this is a sound of " + l for l in ["dog", "rain", "siren"]])).argmax(1))


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600)


def test_cli_convert_and_classify(pth, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    r = _run("clap_jax.convert", "msclap-to-jax", pth, ckpt, "--n-head", "2")
    assert r.returncode == 0, r.stderr
    out_pth = str(tmp_path / "back.pth")
    r = _run("clap_jax.convert", "jax-to-msclap", ckpt, out_pth)
    assert r.returncode == 0, r.stderr
    a, b = cv.read_state_dict(pth), cv.read_state_dict(out_pth)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (tmp_path / "back.safetensors").is_file()
    # a rerun into the same files (as scripts/main.sh does) replaces our own earlier export
    r = _run("clap_jax.convert", "jax-to-msclap", ckpt, out_pth)
    assert r.returncode == 0, r.stderr
    wav = str(tmp_path / "tone.wav")
    sf.write(wav, (0.3 * np.sin(np.arange(22050) * 0.05)).astype(np.float32), 22050)
    r = _run("clap_jax.classify", "--weights", ckpt, "--labels", "dog,rain,siren", "--json", wav)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res[0]["file"] == wav and len(res[0]["top"]) == 3
    assert abs(sum(t["prob"] for t in res[0]["top"]) - 1) < 1e-4
    r = _run("clap_jax.classify", "--weights", str(tmp_path / "nope.pth"), "--labels", "a", wav)
    assert r.returncode == 2 and "nope.pth: no such file" in r.stderr


def test_save_keeps_files_it_did_not_write(clap, tmp_path):
    from clap_jax.convert import CheckpointError

    d = tmp_path / "here"
    d.mkdir()
    (d / "data.csv").write_text("a,b")
    with pytest.raises(CheckpointError, match="--overwrite"):
        clap.save(str(d))
    clap.save(str(d), overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "data.csv", "model.safetensors"]
    np.testing.assert_array_equal(CLAP(str(d)).get_text_embeddings(["a dog"]), clap.get_text_embeddings(["a dog"]))


def test_per_batch_generators_yield_every_batch(clap):
    texts = [f"text {i}" for i in range(5)]
    parts = list(clap.get_text_embeddings_per_batch(texts, 2))
    assert [p.shape[0] for p in parts] == [2, 2, 1]
    np.testing.assert_allclose(np.concatenate(parts), clap.get_text_embeddings(texts), rtol=1e-5, atol=1e-6)
