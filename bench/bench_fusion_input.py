"""Host cost of LAION-CLAP's feature-fusion input per clip: clap_jax.audio.fusion.laion_audio_input (numpy, what
the training pipeline's data workers run) vs laion_clap 1.1.7's `get_audio_features(..., 'fusion', 'repeatpad')`
(torchaudio mel + torchvision resize, what its data loader runs), same clips, same crop positions.

  python bench/bench_fusion_input.py [--seconds 30 60] [--clips 4] [--repeats 3] [--threads 1]

Both sides include the int16 round trip, the whole clip's HTK log-mel, the three crops and the resized global
view. Prints the machine, milliseconds per clip and the ratio laion/ours (higher is better for us), and the largest
difference of the views in dB.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from bench_embed_2022 import machine, timeit  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 60.0])
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a data worker is one process)")
    args = p.parse_args()

    import torch

    import laion_oracle as lo
    from clap_jax.audio import fusion
    from clap_jax.models import registry

    torch.set_num_threads(args.threads)
    ref = lo.build_laion(registry.model_config("laion-clap-tiny-fusion"), seed=0)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}; median of {args.repeats}")
    print("| clip s | clap_jax ms/clip | laion_clap ms/clip | ratio | max view difference (dB) |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for sec in args.seconds:
        waves = [(rng.standard_normal(int(sec * 48000)) * 0.1).astype(np.float32) for _ in range(args.clips)]

        def ours():
            state = np.random.RandomState(3)
            return [fusion.laion_audio_input(w, state, fusion=True) for w in waves]

        def theirs():
            return lo.audio_inputs(ref, waves, seed=3)

        a, b = ours(), theirs()
        diff = max(float(np.abs(x["mel_fusion"] - y["mel_fusion"].numpy()).max()) for x, y in zip(a, b))
        t_ours, t_ref = timeit(ours, args.repeats), timeit(theirs, args.repeats)
        n = args.clips
        print(f"| {sec:g} | {1e3 * t_ours / n:.1f} | {1e3 * t_ref / n:.1f} | {t_ref / t_ours:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
