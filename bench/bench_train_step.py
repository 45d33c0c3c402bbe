# python bench/bench_train_step.py                        (full size, batch 2 per device, vs msclap PyTorch)
# python bench/bench_train_step.py --size tiny --batch 8 --steps 5     (seconds on a CPU)
# python bench/bench_train_step.py --batch 64 --dtype bfloat16 --no-torch   (on a GPU/TPU: examples/s and MFU)
"""Train-step throughput: clap_jax (forward + backward + Adam, one jitted step, the trainer's own code path) vs
msclap's PyTorch model (forward + backward + Adam) on the same machine, shapes and batch; printed as a ratio.

Both sides: symmetric contrastive loss over the batch, Adam lr 1e-3, synthetic audio (B, seconds * 44.1 kHz) and
77-token captions. Timing excludes compilation / the first step and blocks on the result of every step.
On an accelerator it also prints examples/s/device and MFU from the analytic FLOP count (clap_jax/train/flops.py).
Host memory: the script re-executes itself with glibc's huge-page malloc (clap_jax/hostmem.py; both sides run in
that one process); `--no-hugepages` measures glibc's default instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from clap_jax import hostmem  # noqa: E402

if __name__ == "__main__" and "--no-hugepages" not in sys.argv:
    hostmem.reexec_with_hugepages()  # before importing jax; both sides share the process (clap_jax/hostmem.py)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from clap_jax.models import config as model_config  # noqa: E402
from clap_jax.train import flops as flops_lib  # noqa: E402
from clap_jax.train import state as state_lib  # noqa: E402
from clap_jax.train import step as step_lib  # noqa: E402
from clap_jax.train.config import base  # noqa: E402
from clap_jax.train.random_batches import make_global_batch  # noqa: E402


def make_config(a):
    c = base()
    c.model = model_config.clap_2023() if a.size == "full" else model_config.tiny()
    c.model.dtype = a.dtype
    c.model.remat = a.remat
    c.batch_size = a.batch
    c.model.audio.duration = a.seconds
    c.optim.schedule = "constant"
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.loss.kind = a.loss
    if a.fsdp:
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.sharding.rules = [(".*", "fsdp")]
    return c


def bench_jax(c, steps):
    from clap_jax.models.clap import CLAPModel
    from clap_jax.train import sharding as shd
    mesh = shd.make_mesh(c.mesh)
    model = CLAPModel(c.model)
    tx, schedule, init_fn, abstract_state, state_sh = state_lib.abstract_setup(model, c, mesh)
    step_fn, info = step_lib.compile_train_step(
        step_lib.make_train_step(model, tx, c, mesh, schedule, state_sh["params"]), abstract_state, state_sh, mesh, c)
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(0))
    bsh = shd.batch_sharding(mesh)
    batches = [jax.device_put(make_global_batch(0, i, c.batch_size, model_config.clip_samples(c.model), 77, 8), bsh)
               for i in range(2)]
    state, m = step_fn(state, batches[0])          # warm-up
    jax.block_until_ready(m)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, m = step_fn(state, batches[i % 2])
        jax.block_until_ready((state["params"], m))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(m["loss"]), info, mesh.size


def bench_torch(c, steps, threads):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from msclap_oracle import build_msclap
    if threads:
        torch.set_num_threads(threads)
    model = build_msclap(c.model).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [make_global_batch(0, i, c.batch_size, model_config.clip_samples(c.model), 77, 8) for i in range(2)]
    batches = [(torch.from_numpy(b["audio"]), {"input_ids": torch.from_numpy(b["input_ids"]).long(),
                                               "attention_mask": torch.from_numpy(b["attention_mask"]).long()})
               for b in batches]

    def step(audio, text):
        cap, aud, scale = model(audio, text)
        cap = torch.nn.functional.normalize(cap, dim=-1)
        aud = torch.nn.functional.normalize(aud, dim=-1)
        logits = scale.clamp(max=100.0) * aud @ cap.T
        labels = torch.arange(len(logits))
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                      + torch.nn.functional.cross_entropy(logits.T, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    step(*batches[0])
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = step(*batches[i % 2])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), loss


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--batch", type=int, default=None, help="global batch (default 2 per device)")
    p.add_argument("--seconds", type=float, default=7.0, help="clip length (full size: 7 s = 308700 samples)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true")
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--loss", default="global", choices=["global", "sharded"])
    p.add_argument("--no-torch", action="store_true", help="skip the msclap PyTorch side")
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--no-hugepages", action="store_true",
                   help="keep glibc's default malloc (4 KiB pages); by default the run is re-executed with "
                        "GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which both sides share (clap_jax/hostmem.py)")
    a = p.parse_args()
    a.batch = a.batch or 2 * jax.device_count()
    c = make_config(a)
    dev = jax.devices()[0]
    print(f"devices: {jax.device_count()} x {dev.device_kind} ({dev.platform}); model {a.size}, batch {a.batch}, "
          f"clip {a.seconds}s, dtype {a.dtype}, remat {a.remat}, fsdp {a.fsdp}, loss {a.loss}")
    print(f"host memory: {hostmem.describe()} (same process for both sides)")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from machine import describe
    import torch

    print(describe(torch_threads=a.torch_threads or torch.get_num_threads()))
    t_jax, loss_jax, info, n_dev = bench_jax(c, a.steps)
    ex_s = a.batch / t_jax
    fl = flops_lib.clap_train_flops_per_example(c.model, model_config.clip_samples(c.model))
    peak = flops_lib.peak_flops(dev.device_kind)
    print(f"clap_jax : {t_jax * 1e3:9.1f} ms/step  {ex_s:8.2f} examples/s  {ex_s / n_dev:8.2f} ex/s/device  "
          f"loss {loss_jax:.4f}  compile {info['compile_s']:.1f}s  temp {info.get('temp_gb', float('nan')):.2f} GB")
    print(f"analytic train FLOPs/example {fl / 1e9:.2f} GFLOP; achieved {ex_s * fl / n_dev / 1e12:.3f} TFLOP/s/device"
          + (f"; MFU {100 * ex_s * fl / n_dev / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s" if peak else
             " (MFU: unknown peak for this device)"))
    if "xla_flops_per_device" in info:
        print(f"XLA cost analysis: {info['xla_flops_per_device'] * n_dev / a.batch / 1e9:.2f} GFLOP/example")
    if not a.no_torch:
        t_t, loss_t = bench_torch(c, a.steps, a.torch_threads)
        print(f"msclap   : {t_t * 1e3:9.1f} ms/step  {a.batch / t_t:8.2f} examples/s  loss {loss_t:.4f}")
        print(f"ratio clap_jax / msclap throughput: {t_t / t_jax:.2f}x")


if __name__ == "__main__":
    main()
