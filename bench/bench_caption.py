"""Captioning speed: clap_jax's batched, jitted beam search vs msclap's per-clip `_generate_beam` loop, on the same
prefixes and weights, same machine.

  python bench/bench_caption.py [--config msclap-clapcap-tiny] [--clips 16] [--beam 5] [--steps 67] [--threads N]

Both sides decode the same random GPT-2 prefixes (the audio encoder and mapper are left out: they run once per
clip on both sides and are covered by bench_embed.py), with the same random weights: msclap's real code with
random weights (tests/clapcap_oracle.py) and ours imported from its state dict. Every clip's beams are checked to
be the same tokens on both sides. Prints captions per second for each and the ratio; compile time is reported
separately and excluded. `--config msclap-clapcap` is the real size (GPT-2 small, prefix 40), slow on a CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="msclap-clapcap-tiny")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--steps", type=int, default=67)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--stop-gain", type=float, default=1.0,
                   help="scale of the stop token's embedding in the random weights (>1: shorter captions)")
    args = p.parse_args()

    import jax
    import torch

    from clap_jax.convert import clapcap as cv
    from clap_jax.models import clapcap, registry
    from clapcap_oracle import build_clapcap, generate_beam

    torch.set_num_threads(args.threads)
    cfg = registry.model_config(args.config)
    ref = build_clapcap(cfg, seed=0, stop_gain=args.stop_gain)
    variables = jax.device_put(cv.from_state_dict({k: v.numpy().copy() for k, v in ref.state_dict().items()}, cfg))
    gp = variables["params"]["gpt"]["transformer"]
    rng = np.random.default_rng(0)
    prefix = rng.standard_normal((args.clips, cfg.caption.prefix_length, cfg.text.n_embd)).astype(np.float32)

    def ours():
        return jax.device_get(clapcap.beam_search(gp, prefix, cfg, beam_size=args.beam, max_steps=args.steps))

    t0 = time.perf_counter()
    ours()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = ours()
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = [generate_beam(ref, prefix[i], args.beam, entry_length=args.steps) for i in range(args.clips)]
    theirs_s = time.perf_counter() - t0
    same = sum(theirs[i] == [out["tokens"][i, j, :out["lengths"][i, j]].tolist() for j in range(args.beam)]
               for i in range(args.clips))
    mean_len = float(np.mean(out["lengths"][:, 0]))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe

    print(describe(torch_threads=args.threads))
    print(f"config {args.config}, {args.clips} clips, beam {args.beam}, up to {args.steps} tokens "
          f"(best beam mean length {mean_len:.1f}); identical beams on {same}/{args.clips} clips")
    print(f"| decoder | seconds | captions/s |\n|---|---|---|")
    print(f"| msclap _generate_beam, per clip (PyTorch) | {theirs_s:.2f} | {args.clips / theirs_s:.2f} |")
    print(f"| clap_jax beam_search, batched + jitted | {ours_s:.2f} | {args.clips / ours_s:.2f} |")
    print(f"speed-up {theirs_s / ours_s:.1f}x (clap_jax compile {compile_s:.1f} s, excluded)")


if __name__ == "__main__":
    main()
