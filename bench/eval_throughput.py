"""Embedding throughput of the eval harness (clips/s) against msclap's get_audio_embeddings, same clips/machine.

    PYTHONPATH=. python3 bench/eval_throughput.py --weights CLAP_weights_2023.pth [--clips 256] [--batch-size 64]

Ours: clap_jax.inference.CLAP(weights=...) driven by the harness (parallel decode + 7-s window in
clap_jax.eval.clips, large jitted batches inside CLAP.get_audio_embeddings), cache disabled.
msclap: CLAPWrapper.get_audio_embeddings, (a) one file per call as examples/zero_shot_classification.py does,
(b) batches of --batch-size paths. msclap is built offline: GPT-2 from GPT2Config (the .pth overwrites it), the
tokenizer from clap_jax's bundled BPE files, and, since torchaudio cannot be installed beside torch 2.13 here,
a small stand-in for torchaudio.load (soundfile) and T.Resample (soxr) - so both sides decode and resample with
the same libraries and the comparison measures batching/jit/parallel decoding. Without --weights msclap runs with
random weights (speed is the same) and ours with whatever CLAP() builds by default.

The clips are 5-s noise+tone files at 32 kHz (resampled to 44.1 kHz, repeat-padded to 7 s by both sides, so no
random crop): the mean cosine between the two sides' embeddings is printed as a sanity check when --weights is
given. Results go to bench/out/eval_throughput.json. The goal is a ratio of at least 3x over batched msclap.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import soundfile as sf


def make_clips(folder: Path, n: int, seconds: float = 5.0, sr: int = 32000) -> list:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    paths = []
    for i in range(n):
        y = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t)
        p = folder / f"clip{i:05d}.wav"
        sf.write(p, y.astype(np.float32), sr)
        paths.append(str(p))
    return paths


def _torchaudio_standin():
    import librosa
    import torch

    ta = types.ModuleType("torchaudio")
    tr = types.ModuleType("torchaudio.transforms")

    def load(path):
        y, sr = sf.read(path, dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(y.T)), sr

    class Resample:
        def __init__(self, orig, new):
            self.orig, self.new = orig, new

        def __call__(self, x):
            return torch.from_numpy(librosa.resample(x.numpy(), orig_sr=self.orig, target_sr=self.new, res_type="soxr_hq"))

    ta.load, tr.Resample, ta.transforms = load, Resample, tr
    sys.modules.setdefault("torchaudio", ta)
    sys.modules.setdefault("torchaudio.transforms", tr)


def build_msclap(weights: str | None):
    import torch
    from transformers import GPT2Config, GPT2Model

    _torchaudio_standin()
    import msclap.models.clap as mclap
    from clap_jax.text.tokenizer import _load_hf_tokenizer

    mclap.AutoModel.from_pretrained = staticmethod(lambda *a, **k: GPT2Model(GPT2Config()))
    import msclap.CLAPWrapper as cw

    cw.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda *a, **k: _load_hf_tokenizer(None))
    w = cw.CLAPWrapper.__new__(cw.CLAPWrapper)
    w.np_str_obj_array_pattern = re.compile(r"[SaUO]")
    w.default_collate_err_msg_format = "default_collate: unsupported type {}"
    w.config_as_str = (Path(cw.__file__).parent / "configs" / "config_2023.yml").read_text()
    w.use_cuda = torch.cuda.is_available()
    if weights and weights.endswith(".pth"):
        w.model_fp = weights
        w.clap, w.tokenizer, w.args = w.load_clap()
    else:  # random weights: same architecture, same speed
        real_load = cw.torch.load
        cw.torch.load = lambda *a, **k: {"model": {}}
        try:
            w.model_fp = "random"
            w.clap, w.tokenizer, w.args = w.load_clap()
        finally:
            cw.torch.load = real_load
    return w


def time_ours(model, paths, batch_size, workers):
    from clap_jax.eval.clips import LoaderConfig
    from clap_jax.eval.embed import EmbeddingCache, embed_audio

    nocache = EmbeddingCache(None, None)
    embed_audio(model, "warmup", paths[:batch_size], nocache, LoaderConfig(), batch_size, workers, progress=False)
    t0 = time.perf_counter()
    emb, _ = embed_audio(model, "bench", paths, nocache, LoaderConfig(), batch_size, workers, progress=False)
    return len(paths) / (time.perf_counter() - t0), emb


def time_msclap(w, paths, batch_size):
    w.get_audio_embeddings(paths[:1], resample=True)  # warm-up
    t0 = time.perf_counter()
    single = [w.get_audio_embeddings([p], resample=True).cpu().numpy() for p in paths]
    one_at_a_time = len(paths) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        w.get_audio_embeddings(paths[i:i + batch_size], resample=True)
    batched = len(paths) / (time.perf_counter() - t0)
    return one_at_a_time, batched, np.concatenate(single)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="msclap .pth (used by both sides) or a clap_jax checkpoint")
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--msclap-clips", type=int, default=None, help="fewer clips for msclap (it is slow on CPU)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", default="bench/out/eval_throughput.json")
    a = ap.parse_args(argv)

    from clap_jax.inference import CLAP

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_clips(Path(tmp), a.clips)
        ours_model = CLAP(weights=a.weights) if a.weights else CLAP()
        ours, ours_emb = time_ours(ours_model, paths, a.batch_size, a.workers)
        ms = build_msclap(a.weights)
        m_paths = paths[: a.msclap_clips or a.clips]
        ms_single, ms_batched, ms_emb = time_msclap(ms, m_paths, a.batch_size)
    out = {"clips": a.clips, "msclap_clips": len(m_paths), "batch_size": a.batch_size, "workers": a.workers,
           "ours_clips_per_s": ours, "msclap_one_file_per_call_clips_per_s": ms_single,
           "msclap_batched_clips_per_s": ms_batched, "ratio_vs_msclap_one_file": ours / ms_single,
           "ratio_vs_msclap_batched": ours / ms_batched, "weights": a.weights}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    out["machine"] = describe()
    try:
        import jax
        out["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception:  # noqa: BLE001 - informational only
        pass
    if a.weights:
        x, y = ours_emb[: len(ms_emb)], ms_emb
        cos = np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        out["mean_cosine_ours_vs_msclap"] = float(cos.mean())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(out["machine"])
    print("| side | clips | clips/s |\n|---|---|---|")
    print(f"| clap_jax (harness, batch {a.batch_size}) | {a.clips} | {ours:.2f} |\n"
          f"| msclap, one file per call | {len(m_paths)} | {ms_single:.2f} |\n"
          f"| msclap, batches of {a.batch_size} | {len(m_paths)} | {ms_batched:.2f} |")
    print(f"ratio vs msclap batched: {ours / ms_batched:.2f}x; vs one file per call: {ours / ms_single:.2f}x"
          + (f"; mean cosine ours vs msclap {out['mean_cosine_ours_vs_msclap']:.6f}" if a.weights else ""))
    print(f"(also in {a.out})")


if __name__ == "__main__":
    main()
