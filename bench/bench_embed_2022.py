"""CLAP 2022 (Cnn14 + BERT) embedding speed: clap_jax (jitted JAX) vs msclap version '2022' (PyTorch), same
weights, same clips, same machine.

  python bench/bench_embed_2022.py [--batch 8] [--repeats 3] [--threads N] [--stft matmul|fft] [--text]

Prints the machine, then a table of seconds per batch and clips per second for the audio tower (5 s clips at
44.1 kHz, full size), and the ratio ours/msclap (higher is better for us); `--text` adds BERT-base on 100-token
captions. Both sides run in float32; compile time is reported separately and excluded. Goal on CPU: >= 1.5x.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def timeit(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def machine() -> str:
    """The machine header (bench/machine.py): CPU model and flags, cores, load, malloc, threads, versions."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe

    import torch

    return "\n" + describe(torch_threads=torch.get_num_threads())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--stft", default="fft", choices=("matmul", "fft"), help="our STFT implementation")
    p.add_argument("--text", action="store_true", help="also time the text tower")
    args = p.parse_args()

    import jax
    import torch

    from clap_jax.convert import msclap2022 as cv
    from clap_jax.models import registry
    from clap_jax.text.bert_tokenizer import BertWordPieceTokenizer
    from msclap2022_oracle import build_msclap_2022, msclap_text_inputs_2022, msclap_tokenizer_2022, write_vocab

    torch.set_num_threads(args.threads)
    cfg = registry.model_config("msclap-2022")
    ref = build_msclap_2022(cfg, seed=0)
    variables = jax.device_put(cv.from_msclap_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, cfg))
    cfg.audio.stft = args.stft
    model = registry.build_model(cfg)
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal((args.batch, 220500)) * 0.1).astype(np.float32)

    audio_fn = jax.jit(lambda v, w: model.apply(v, w, method=model.encode_audio)["embedding"])
    t0 = time.perf_counter()
    ours_emb = np.asarray(audio_fn(variables, wav))
    compile_audio = time.perf_counter() - t0
    ours_a = timeit(lambda: audio_fn(variables, wav).block_until_ready(), args.repeats)
    wav_t = torch.from_numpy(wav)

    def ref_audio():
        with torch.no_grad():
            return ref.audio_encoder(wav_t)[0]

    ref_emb = ref_audio().numpy()   # warm-up, and the check that both compute the same thing
    ref_a = timeit(ref_audio, args.repeats)
    err = float(np.abs(ours_emb - ref_emb).max() / np.abs(ref_emb).max())
    rows = [("audio (5 s clips)", args.batch, ours_a, ref_a)]

    if args.text:
        import tempfile

        vocab = write_vocab(tempfile.mkdtemp(prefix="bench_vocab_"))
        texts = [f"a dog barks twice on the roof {i}" for i in range(args.text_batch)]
        ids, mask = BertWordPieceTokenizer(vocab)(texts)
        tok = msclap_text_inputs_2022(msclap_tokenizer_2022(vocab), texts)
        text_fn = jax.jit(lambda v, i, m: model.apply(v, i, m, method=model.encode_text))
        text_fn(variables, ids, mask).block_until_ready()
        ours_t = timeit(lambda: text_fn(variables, ids, mask).block_until_ready(), args.repeats)

        def ref_text():
            with torch.no_grad():
                ref.caption_encoder(tok)

        ref_text()
        rows.append(("text (100 tokens)", args.text_batch, ours_t, timeit(ref_text, args.repeats)))

    dev = jax.devices()[0]
    print(f"machine: {machine()}")
    print(f"device: jax {dev.platform} ({dev.device_kind}), torch cpu threads {torch.get_num_threads()}; float32; "
          f"our STFT {args.stft}; median of {args.repeats}; max relative difference of the audio embeddings {err:.1e}")
    print(f"compile (ours, once): audio {compile_audio:.1f} s")
    print("| tower | batch | clap_jax s/batch | msclap s/batch | clap_jax items/s | msclap items/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, b, o, r in rows:
        print(f"| {name} | {b} | {o:.3f} | {r:.3f} | {b / o:.1f} | {b / r:.1f} | {r / o:.2f}x |")


if __name__ == "__main__":
    main()
