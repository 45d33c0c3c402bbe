"""Where the audio tower's time goes: clap_jax's HTSAT stage by stage against msclap's, same inputs, same process.

  python bench/profile_audio.py [--batch 8] [--repeats 5] [--stft matmul|fft] [--xla-flags "..."]

Ours: each stage is its own jitted function (STFT power, log-mel, bn0 + resize + fold, patch embedding, each Swin
stage, final norm + pooling + projection) timed on the previous stage's output; the sum is compared with the whole
tower jitted as one program (fusion across stage boundaries makes the whole a little cheaper than the parts).
msclap: forward pre/post hooks on the same modules of its eager PyTorch model time one forward pass of the tower.
Prints a table of milliseconds per batch and the ratio msclap / ours per stage (above 1: we are faster), headed by
the machine (CPU model, flags that matter, cores, threads, malloc).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))


from bench_embed import timeit as median_time  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=7.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stft", default=None, help="override model.audio.stft ('matmul' or 'fft')")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import torch

    from clap_jax.convert import msclap as cv
    from clap_jax.models import config as model_config
    from clap_jax.models.htsat import HTSAT
    from clap_jax.models.projection import Projection
    from machine import describe
    from msclap_oracle import build_msclap

    torch.set_num_threads(args.threads)
    cfg = model_config.clap_2023()
    if args.stft:
        cfg.audio.stft = args.stft
    ref = build_msclap(cfg, seed=0)
    variables = cv.from_msclap_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, cfg)
    hv = jax.device_put({col: tree["audio_encoder"]["base"] for col, tree in variables.items()
                         if "base" in tree.get("audio_encoder", {})})
    pv = jax.device_put({"params": variables["params"]["audio_encoder"]["projection"]})
    htsat = HTSAT(cfg.audio)
    proj = Projection(cfg.d_proj, 0.0)
    rng = np.random.default_rng(0)
    wav = jnp.asarray((rng.standard_normal((args.batch, int(args.seconds * 44100))) * 0.1).astype(np.float32))

    def stage(method):
        return jax.jit(lambda v, x: htsat.apply(v, x, method=method))

    def power(m, w):
        from clap_jax.audio import frontend
        c = m.config
        if c.stft == "fft":
            return frontend.power_spectrogram_fft(w, c.n_fft, c.hop_size)
        return frontend.power_spectrogram(w, m.stft_real.value, m.stft_imag.value, c.hop_size)

    def logmel(m, pw):
        from clap_jax.audio import frontend
        return frontend.log_mel(pw, m.mel_w.value)

    stages = [("STFT power", stage(power)), ("log-mel", stage(logmel)),
              ("bn0 + resize + fold", stage(lambda m, x: m.image(m.bn0(x, use_running_average=True)))),
              ("patch embed", stage(lambda m, x: m.patch_embed(x)))]
    for i in range(len(cfg.audio.depths)):
        stages.append((f"Swin stage {i + 1}", stage(lambda m, x, i=i: m.layers[i](x))))
    stages.append(("norm + pool", stage(lambda m, x: jnp.mean(m.norm(x), axis=1))))
    proj_fn = jax.jit(lambda v, x: proj.apply(v, x))
    whole = jax.jit(lambda hv, pv, w: proj.apply(pv, htsat.apply(hv, w)["latent"]))

    ours = []
    x = wav
    for name, fn in stages:
        y = fn(hv, x).block_until_ready()      # compile
        ours.append((name, median_time(lambda: fn(hv, x).block_until_ready(), args.repeats)))
        x = y
    proj_fn(pv, x).block_until_ready()
    ours.append(("projection", median_time(lambda: proj_fn(pv, x).block_until_ready(), args.repeats)))
    whole(hv, pv, wav).block_until_ready()
    ours_whole = median_time(lambda: whole(hv, pv, wav).block_until_ready(), args.repeats)

    # msclap: hooks around the same modules
    h = ref.audio_encoder.base.htsat
    mods = [("STFT power", h.spectrogram_extractor), ("log-mel", h.logmel_extractor), ("bn0", h.bn0),
            ("patch embed", h.patch_embed)]
    mods += [(f"Swin stage {i + 1}", layer) for i, layer in enumerate(h.layers)]
    mods += [("norm", h.norm), ("tscam head", h.tscam_conv), ("projection", ref.audio_encoder.projection)]
    acc: dict[str, list[float]] = {n: [] for n, _ in mods}
    start: dict[str, float] = {}
    for name, mod in mods:
        mod.register_forward_pre_hook(lambda m, a, name=name: start.__setitem__(name, time.perf_counter()))
        mod.register_forward_hook(lambda m, a, o, name=name: acc[name].append(time.perf_counter() - start[name]))
    wav_t = torch.from_numpy(np.asarray(wav))
    total = []
    with torch.no_grad():
        ref.audio_encoder(wav_t)                      # warm-up
        for v in acc.values():
            v.clear()
        for _ in range(args.repeats):
            t = time.perf_counter()
            ref.audio_encoder(wav_t)
            total.append(time.perf_counter() - t)
    ref_t = {n: float(np.median(v)) for n, v in acc.items()}
    ref_whole = float(np.median(total))
    ref_t["bn0 + resize + fold"] = ref_t.pop("bn0")   # msclap's resize and fold are plain functions between modules
    hooked = sum(ref_t.values())
    ref_t["norm + pool"] = ref_t.pop("norm") + ref_t.pop("tscam head")

    print(describe(torch_threads=torch.get_num_threads()))
    print(f"audio tower, batch {args.batch} x {args.seconds:g} s, float32, median of {args.repeats}; "
          f"model.audio.stft={cfg.audio.stft!r}")
    print("| stage | clap_jax ms | msclap ms | msclap / clap_jax |")
    print("|---|---|---|---|")
    for name, t in ours:
        r = ref_t.get(name)
        print(f"| {name} | {1e3 * t:.1f} | {'' if r is None else f'{1e3 * r:.1f}'} | "
              f"{'' if r is None else f'{r / t:.2f}x'} |")
    print(f"| sum of stages | {1e3 * sum(t for _, t in ours):.1f} | {1e3 * hooked:.1f} (hooked modules) | |")
    print(f"| whole tower (one program / one forward) | {1e3 * ours_whole:.1f} | {1e3 * ref_whole:.1f} | "
          f"**{ref_whole / ours_whole:.2f}x** |")
    print("(msclap's time outside hooked modules - resize, fold, reshapes, tscam pooling - is in its whole-tower "
          "figure only)")


if __name__ == "__main__":
    main()
