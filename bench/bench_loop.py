# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python bench/bench_loop.py --steps 24
# python bench/bench_loop.py --config configs/demo.py:random,batch=32 --steps 40 --warmup 8
"""The train loop's steps/s with the old host habits and with the new ones, in one run, on the same machine.

    old: each batch made when its step is due (data.prefetch=0) and every step's metrics read from the devices
         (one step late) on the host, as the loop did before the metrics were summed on the devices
    new: the config's defaults: batches made and put on the devices 2 steps ahead, metrics summed on the devices
         and read every log.every_steps steps

Both run `train_and_evaluate` on `--config` (default the README demo on its random data, 4 data x 2 FSDP over 8
simulated CPU devices) without a workdir (no checkpoints), the same programs (the second compile comes from the
cache), and time steps --warmup+1 .. --steps: from the moment step --warmup is dispatched until the last step's
result is on the host. Prints a table naming the machine (CPU model, cores, load).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from clap_jax.train import progress as progress_lib  # noqa: E402
from clap_jax.train import train  # noqa: E402


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("bench_cfg", os.path.join(ROOT, path) if not
                                                      os.path.isabs(path) else path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(arg)


def machine() -> str:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe

    return f"{jax.device_count()} {jax.devices()[0].platform} devices\n" + describe()


def run(spec: str, steps: int, warmup: int, old: bool) -> float:
    c = load_config(spec)
    c.total_steps = steps
    c.ckpt.every_steps = 0
    c.eval.every_steps = 0
    if old:
        c.data.prefetch = 0
    marks = {}
    real_update = progress_lib.Progress.update
    prev = []

    def update(self, step, metrics):
        if old and prev:  # the old loop: the previous step's metrics to the host, every step
            jax.device_get(prev.pop())
        if old:
            prev.append(metrics)
        if step == warmup:
            marks["t0"] = time.perf_counter()
        return real_update(self, step, metrics)

    progress_lib.Progress.update = update
    try:
        out = train.train_and_evaluate(c, None)
        jax.block_until_ready(out["state"])
    finally:
        progress_lib.Progress.update = real_update
    return (steps - warmup) / (time.perf_counter() - marks["t0"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.py:random")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1, help="alternate old/new this many times; best of each")
    a = p.parse_args()
    # one compilation cache for both settings: the second run loads the programs the first compiled
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench_loop_cache_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    res = {"old": [], "new": []}
    for _ in range(a.repeats):
        for name in ("old", "new"):
            res[name].append(run(a.config, a.steps, a.warmup, old=name == "old"))
    print(f"\n{a.config}, steps {a.warmup + 1}..{a.steps} timed; {machine()}")
    print("| loop | prefetch | metrics read | steps/s |\n|---|---|---|---|")
    print(f"| old | 0 | every step | {max(res['old']):.3f} |")
    print(f"| new | 2 | every log step | {max(res['new']):.3f} |")
    print(f"speed-up {max(res['new']) / max(res['old']):.2f}x (runs: old {[round(x, 3) for x in res['old']]}, "
          f"new {[round(x, 3) for x in res['new']]})")


if __name__ == "__main__":
    main()
