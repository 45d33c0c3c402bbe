"""Full-size embedding speed: clap_jax (jitted JAX) vs msclap (PyTorch), same inputs, same machine.

  python bench/bench_embed.py [--batch 8] [--repeats 3] [--threads N]

Prints a table of seconds per batch and clips (texts) per second for the audio and text towers, and the ratio
ours/msclap (higher is better for us). Both sides run in float32 on the CPU (or JAX on its default device);
compile time is reported separately and excluded from the steady-state numbers. Goal on CPU: >= 1.5x.
Two rows per tower: the jitted tower on the whole batch (the same work as msclap's forward), and the product's
call (`CLAP.get_audio_embeddings` / `get_text_embeddings`: clip rules, tokenization, CPU micro-batches) on the same
inputs. The machine header (CPU, flags, cores, load, threads, malloc) comes first.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def timeit(fn, repeats):
    return timeit_interleaved([fn], repeats)[0]


def timeit_interleaved(fns, repeats):
    """Median seconds of each function, run in turn (a, b, c, a, b, c, ...) so that a slow spell of the machine
    falls on every side alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) for ts in times]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="our compute dtype (msclap stays float32); the agreement with msclap is printed")
    args = p.parse_args()

    import jax
    import torch

    from clap_jax.convert import msclap as cv
    from clap_jax.models import config as model_config
    from clap_jax.models.clap import CLAPModel
    from clap_jax.text.tokenizer import ClapTokenizer
    from msclap_oracle import build_msclap, msclap_audio_outputs, msclap_text_embeddings, msclap_text_inputs

    torch.set_num_threads(args.threads)
    cfg = model_config.clap_2023()
    ref = build_msclap(cfg, seed=0)
    variables = jax.device_put(cv.from_msclap_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, cfg))
    cfg.dtype = args.dtype
    model = CLAPModel(cfg)
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal((args.batch, 308700)) * 0.1).astype(np.float32)
    texts = [f"a recording of sound number {i} with some words" for i in range(args.text_batch)]
    ids, mask = ClapTokenizer()(texts)

    audio_fn = jax.jit(lambda v, w: model.apply(v, w, method=model.encode_audio)["embedding"])
    text_fn = jax.jit(lambda v, i, m: model.apply(v, i, m, method=model.encode_text))
    t0 = time.perf_counter()
    audio_fn(variables, wav).block_until_ready()
    compile_audio = time.perf_counter() - t0
    t0 = time.perf_counter()
    text_fn(variables, ids, mask).block_until_ready()
    compile_text = time.perf_counter() - t0

    # The product's path: CLAP.get_*_embeddings on the same clips / captions (tokenization and the clip rules
    # included; on one CPU device it runs the towers on micro-batches, clap_jax.inference.CPU_*_BATCH).
    from clap_jax.inference import CLAP

    clap = CLAP(variables=variables, config=cfg)
    ours_emb = (np.asarray(audio_fn(variables, wav)), np.asarray(text_fn(variables, ids, mask)))
    ref_emb = (np.asarray(msclap_audio_outputs(ref, np.asarray(wav))["embedding"]),
               np.asarray(msclap_text_embeddings(ref, texts)))
    clips = list(np.asarray(wav))
    clap.get_audio_embeddings(clips, sample_rate=44100), clap.get_text_embeddings(texts)   # compile
    wav_t = torch.from_numpy(np.asarray(wav))
    tok = msclap_text_inputs(texts)

    def ref_audio():
        with torch.no_grad():
            ref.audio_encoder(wav_t)

    def ref_text():
        with torch.no_grad():
            ref.caption_encoder(tok)

    ref_audio(), ref_text()  # warm-up
    ours_a, ours_pa, ref_a = timeit_interleaved(
        [lambda: audio_fn(variables, wav).block_until_ready(),
         lambda: clap.get_audio_embeddings(clips, sample_rate=44100), ref_audio], args.repeats)
    ours_t, ours_pt, ref_t = timeit_interleaved(
        [lambda: text_fn(variables, ids, mask).block_until_ready(), lambda: clap.get_text_embeddings(texts),
         ref_text], args.repeats)

    dev = jax.devices()[0]
    print(f"device: jax {dev.platform} ({dev.device_kind}), torch cpu threads {torch.get_num_threads()}; "
          f"float32; median of {args.repeats}, the sides interleaved")
    print(f"compile (ours, once): audio {compile_audio:.1f} s, text {compile_text:.1f} s")
    print(f"| tower | batch | clap_jax s/batch | msclap s/batch | clap_jax items/s | msclap items/s | ratio |")
    print(f"|---|---|---|---|---|---|---|")
    rows = (("audio tower, one jitted batch (7 s clips)", args.batch, ours_a, ref_a),
            ("text tower, one jitted batch (77 tokens)", args.text_batch, ours_t, ref_t),
            ("audio: CLAP.get_audio_embeddings vs the msclap tower", args.batch, ours_pa, ref_a),
            ("text: CLAP.get_text_embeddings vs the msclap tower", args.text_batch, ours_pt, ref_t))
    for name, b, o, r in rows:
        print(f"| {name} | {b} | {o:.3f} | {r:.3f} | {b / o:.1f} | {b / r:.1f} | {r / o:.2f}x |")
    for name, x, y in (("audio", ours_emb[0], ref_emb[0]), ("text", ours_emb[1], ref_emb[1])):
        cos = np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        rel = np.abs(x - y).max() / np.abs(y).max()
        print(f"{name} embeddings ({args.dtype}) vs msclap (float32): max relative difference {rel:.1e}, "
              f"cosine min {cos.min():.6f}")


if __name__ == "__main__":
    main()
