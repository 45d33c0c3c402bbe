"""Pipeline throughput: clips/s for 7 s crops (44.1 kHz) read from TFRecords, per worker and in total.

    PYTHONPATH=. JAX_PLATFORMS=cpu python3 bench/bench_pipeline.py --num-clips 256 --workers 0,2 --formats pcm16,flac
    PYTHONPATH=. JAX_PLATFORMS=cpu python3 bench/bench_pipeline.py --formats pcm16 --workers 0 --global-workers 1 \
        --compile-json runs/compile/*.json     # the trainer's input path, and what each compiled layout needs

Writes ``--num-clips`` noise+tone clips of ``--clip-seconds`` (default 10 s, cropped to 7 s like AudioSet) per
format into ``--dir`` (reused if present), then times the full pipeline (random read, CRC, Example parse, decode,
seeded crop, tokenization, batching; ``workers=0`` = in-process with read threads) after one warm-up batch. Also
times the per-clip work alone in one thread (``core``: clips/s one core sustains). ``clips per CPU-second`` counts
the CPU time of the main process and its workers during the timed batches: the per-core rate even when other jobs
share the machine (wall-clock rates then understate it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def make_data(d: str, n: int, seconds: float, sr: int, fmt: str) -> str:
    from clap_jax.data import preprocess, tfrecord

    out = os.path.join(d, f"{fmt}_{n}x{seconds:g}s")
    if os.path.isfile(os.path.join(out, "dataset.json")):
        return out
    os.makedirs(out, exist_ok=True)
    opts = preprocess.Options(sample_rate=sr, audio_format=fmt)
    rng = np.random.default_rng(0)
    m = int(seconds * sr)
    t = np.arange(m) / sr
    names, per = [], 64
    for s in range(0, n, per):
        name = f"train-{s // per:05d}-of-{-(-n // per):05d}.tfrecord"
        with tfrecord.ShardWriter(os.path.join(out, name)) as w:
            for i in range(s, min(n, s + per)):
                x = (0.2 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.05 * rng.standard_normal(m))
                row = {"id": f"bench-{i}", "captions": [f"a tone with noise number {i}", "bench clip"],
                       "labels": [], "source": "bench", "split": "train"}
                w.write(preprocess.make_example(row, x.astype(np.float32), opts))
        names.append(name)
    import json

    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump({"splits": {"train": {"shards": names, "num_examples": n}}}, f)
    return out


def _cpu_seconds(pids) -> float:
    """user+system CPU seconds used so far by the given live processes (from /proc)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def bench_pipeline(d: str, workers: int, batch: int, batches: int, sr: int, threads: int | None) -> tuple[float, float]:
    """Returns (clips per wall second, clips per CPU second of the main process and its workers)."""
    import multiprocessing

    from clap_jax.data import pipeline

    ds = pipeline.build_dataset(d, per_host_batch_size=batch, seed=0, sample_rate=sr, duration=7.0,
                                worker_count=workers, read_threads=threads, process_index=0, process_count=1,
                                worker_buffer_size=4)
    it = iter(ds)
    b = next(it)  # warm-up: worker start, tokenizer, first reads
    assert b["audio"].shape == (batch, int(7.0 * sr))
    pids = [os.getpid()] + [c.pid for c in multiprocessing.active_children()]
    c0, t0 = _cpu_seconds(pids), time.perf_counter()
    for _ in range(batches):
        next(it)
    dt, cpu = time.perf_counter() - t0, _cpu_seconds(pids) - c0
    if hasattr(it, "close"):
        it.close()
    return batch * batches / dt, batch * batches / max(cpu, 1e-9)


def bench_core(d: str, sr: int, n: int) -> float:
    """Per-clip work in one thread, no Grain: pread + CRC + parse + decode + crop (+ tokenization)."""
    from clap_jax.data import pipeline

    src = pipeline.TFRecordDataSource(pipeline.shard_paths(d))
    dc = pipeline.DecodeCrop(sr, int(7.0 * sr))
    tok = pipeline.Tokenize()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(src))
    tok.map({"caption": np.array([b"warm"])})
    t0 = time.perf_counter()
    for k in range(n):
        ex = dc.random_map(src[int(order[k % len(src)])], rng)
        tok.map({"caption": np.array([ex["caption"]])})
    return n / (time.perf_counter() - t0)


def bench_global(d: str, workers: int, batch: int, batches: int) -> tuple[float, float]:
    """The trainer's own input path at full size: configs/clap_2023.py over `d` (7 s at 44.1 kHz, 77 tokens,
    int16 audio), `batch` pairs per step as global arrays on a mesh of this host's devices, made float32 on the
    devices by the trainer's Prefetcher (depth 2). Returns (pairs per wall second, pairs per CPU second)."""
    import multiprocessing

    import jax

    from clap_jax.train import data as data_lib
    from clap_jax.train import sharding as shd
    from configs import clap_2023

    c = clap_2023.get_config(f"dirs={d},batch_size={batch}")
    c.data.num_workers = workers
    mesh = shd.make_mesh(c.mesh)
    it = data_lib.make_data_iterator(c, mesh)
    pf = data_lib.Prefetcher(it, 2, lambda: False)
    b = pf.next()  # warm-up: workers, tokenizer, first reads, the conversion's compile
    assert b["audio"].shape == (batch, int(7.0 * 44100)) and b["audio"].dtype == np.float32
    jax.block_until_ready(b)
    pids = [os.getpid()] + [c.pid for c in multiprocessing.active_children()]
    c0, t0 = _cpu_seconds(pids), time.perf_counter()
    for _ in range(batches):
        jax.block_until_ready(pf.next())
    dt, cpu = time.perf_counter() - t0, _cpu_seconds(pids) - c0
    pf.close()
    if hasattr(it, "close"):
        it.close()
    return batch * batches / dt, batch * batches / max(cpu, 1e-9)


def per_host_need(reports: list[str], per_cpu: float) -> None:
    """For each `python -m clap_jax.train.compile --json` report: pairs/s one host must feed at the roofline step
    time, and the cores that takes at the measured pairs per CPU-second."""
    import json

    print(f"\n{'compiled layout':44s} {'hosts':>5s} {'pairs/s per host':>16s} {'cores per host':>14s}")
    for path in reports:
        with open(path) as f:
            r = json.load(f)
        need = r["roofline"]["pairs_per_s_per_host"]
        name = f"{r['topology']} x{r['num_slices']} mesh {r['mesh']['data']}x{r['mesh']['fsdp']} B{r['batch_size']}"
        print(f"{name:44s} {r['hosts']:5d} {need:16.0f} {need / per_cpu:14.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="/tmp/clap_jax_bench")
    p.add_argument("--num-clips", type=int, default=256)
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--sample-rate", type=int, default=44100)
    p.add_argument("--formats", default="pcm16,flac")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker process counts to time")
    p.add_argument("--read-threads", type=int, default=None, help="default: the pipeline's (2 in-process, 1/worker)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--global-workers", default="", help="also time the trainer's input path (global arrays on "
                   "this host's devices, clap_2023 config) with these worker counts, on the first format")
    p.add_argument("--compile-json", nargs="*", default=[], help="compile reports: print each one's per-host need "
                   "next to the measured rate (the last --global-workers rate, else the last pipeline rate)")
    a = p.parse_args(argv)
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe

    print("# " + describe().replace("\n", "\n# "))
    print(f"# {os.cpu_count()} CPU cores visible; clips of {a.clip_seconds:g} s cropped to 7 s at {a.sample_rate} Hz, "
          f"batch {a.batch}, {a.batches} timed batches")
    print(f"{'format':7s} {'workers':>7s} {'clips/s total':>14s} {'clips/s per worker':>19s} "
          f"{'clips per CPU-second':>21s}")
    for fmt in a.formats.split(","):
        d = make_data(a.dir, a.num_clips, a.clip_seconds, a.sample_rate, fmt)
        core = bench_core(d, a.sample_rate, 200)
        print(f"{fmt:7s} {'core':>7s} {core:14.1f} {core:19.1f} {'':>21s}  (one thread, no Grain)")
        for w in (int(x) for x in a.workers.split(",")):
            r, per_cpu = bench_pipeline(d, w, a.batch, a.batches, a.sample_rate, a.read_threads)
            print(f"{fmt:7s} {w:7d} {r:14.1f} {r / max(w, 1):19.1f} {per_cpu:21.1f}")
            sys.stdout.flush()
    if a.global_workers:
        d = make_data(a.dir, a.num_clips, a.clip_seconds, a.sample_rate, a.formats.split(",")[0])
        for w in (int(x) for x in a.global_workers.split(",")):
            r, per_cpu = bench_global(d, w, a.batch, a.batches)
            print(f"{'global':7s} {w:7d} {r:14.1f} {r / max(w, 1):19.1f} {per_cpu:21.1f}  (trainer input: global "
                  f"arrays on {__import__('jax').device_count()} devices, float32 made on them)")
            sys.stdout.flush()
    if a.compile_json:
        per_host_need(a.compile_json, per_cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
