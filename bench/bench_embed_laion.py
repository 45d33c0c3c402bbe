"""LAION-CLAP audio embedding speed: clap_jax (host preprocessing + jitted JAX) vs laion_clap 1.1.7's
`CLAP_Module.get_audio_embedding_from_data` (its preprocessing + PyTorch), same weights, same clips, same crops.

  python bench/bench_embed_laion.py [--batch 8] [--seconds 10] [--fusion] [--base] [--repeats 3] [--threads N]

Both sides include the whole path from float waveforms to normalised embeddings: the int16 round trip,
repeat-padding / cropping and, with --fusion, the HTK mel views of long clips. Prints the machine, seconds per
batch, clips per second and the ratio ours/laion (higher is better for us), and the largest relative difference
of the embeddings. Compile time is reported separately and excluded. Goal on CPU: >= 2x.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from bench_embed_2022 import machine, timeit  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (longer than 10 s: crops / fusion)")
    p.add_argument("--fusion", action="store_true")
    p.add_argument("--base", action="store_true", help="HTSAT-base instead of HTSAT-tiny")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import torch

    import laion_oracle as lo
    from clap_jax.audio import fusion
    from clap_jax.convert import laion as cv
    from clap_jax.models import registry
    from clap_jax.models.laion import normalize

    torch.set_num_threads(args.threads)
    name = ("laion-htsat-base" if args.base else "laion-htsat-tiny") + ("-fusion" if args.fusion else "")
    cfg = registry.model_config(name)
    ref = lo.build_laion(cfg, seed=0)
    variables = jax.device_put(cv.from_laion_state_dict(lo.state_dict(ref), cfg, "oracle"))
    model = registry.build_model(cfg)
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(int(args.seconds * 48000)) * 0.1).astype(np.float32) for _ in range(args.batch)]
    embed = jax.jit(lambda v, a: normalize(model.apply(v, a, method=model.encode_audio)["embedding"]))

    def ours():
        state = np.random.RandomState(1)
        batch = fusion.batch_inputs([fusion.laion_audio_input(w, state, fusion=cfg.audio.fusion) for w in waves])
        if not cfg.audio.fusion:
            batch.pop("mel_fusion", None)
        return embed(variables, {k: jnp.asarray(v) for k, v in batch.items()}).block_until_ready()

    def theirs():
        np.random.seed(1)
        with torch.no_grad():
            return ref.get_audio_embedding_from_data(waves)

    t0 = time.perf_counter()
    ours_emb = np.asarray(ours())
    compile_s = time.perf_counter() - t0
    ours_s = timeit(ours, args.repeats)
    ref_emb = theirs()
    ref_s = timeit(theirs, args.repeats)
    err = float(np.abs(ours_emb - ref_emb).max() / np.abs(ref_emb).max())
    dev = jax.devices()[0]
    print(f"machine: {machine()}")
    print(f"device: jax {dev.platform} ({dev.device_kind}), torch cpu threads {torch.get_num_threads()}; float32; "
          f"{name}; {args.seconds:g} s clips; median of {args.repeats}; max relative difference {err:.1e}")
    print(f"compile (ours, once): {compile_s:.1f} s")
    print("| model | batch | clap_jax s/batch | laion_clap s/batch | clap_jax clips/s | laion_clap clips/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    b = args.batch
    print(f"| {name} | {b} | {ours_s:.3f} | {ref_s:.3f} | {b / ours_s:.1f} | {b / ref_s:.1f} | {ref_s / ours_s:.2f}x |")


if __name__ == "__main__":
    main()
