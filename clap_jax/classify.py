"""Zero-shot classification of audio files from the command line.

  python -m clap_jax.classify --weights CLAP_weights_2023.pth --labels "dog,rain,siren" a.wav b.flac
  python -m clap_jax.classify --weights ckpt/ --labels-file classes.txt --prompt "this is the sound of " *.wav

Prints, per file, the top labels with their probabilities (softmax over `prompt + label`), and with --json a
machine-readable list. A file that cannot be read is reported on stderr (`error: FILE: reason`) while the others
are still scored; the exit status is then 1 (2 for bad weights or arguments).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from clap_jax.audio.io import CHANNEL_MODES, CROP_MODES
from clap_jax.errors import UserError, run_cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m clap_jax.classify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3, ...)")
    p.add_argument("--weights", required=True, help="clap_jax checkpoint dir or msclap .pth/.safetensors")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--labels", help="comma-separated class names")
    g.add_argument("--labels-file", help="file with one class name per line")
    p.add_argument("--prompt", default="this is a sound of ", help="text put before each label")
    p.add_argument("--top", type=int, default=3, help="how many labels to print per file")
    p.add_argument("--crop", default="center", choices=list(CROP_MODES),
                   help="window of clips longer than the model's clip")
    p.add_argument("--channel-mode", default="mean", choices=list(CHANNEL_MODES))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--tokenizer", default=None,
                   help="text vocabulary: a directory / file / cached hub name (BERT's vocab.txt for msclap-2022 "
                        "weights; GPT-2 BPE files for 2023, default bundled)")
    args = p.parse_args(argv)

    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    else:
        labels = read_labels_file(args.labels_file)
    if not labels:
        raise UserError(f"{'--labels' if args.labels is not None else args.labels_file}: no labels given")

    from clap_jax.audio.io import AudioError
    from clap_jax.inference import CLAP

    clap = CLAP(args.weights, crop=args.crop, channel_mode=args.channel_mode, tokenizer=args.tokenizer)
    # Each file is decoded on its own so that one unreadable file costs only its own row.
    clips, good, failed = [], [], []
    for f in args.files:
        try:
            clips.append(clap.preprocess_audio([f])[0])
            good.append(f)
        except AudioError as e:
            failed.append((f, str(e)))
    results = []
    if clips:
        probs = clap.classify(clips, labels, prompt=args.prompt, sample_rate=clap.sample_rate)
        for f, row in zip(good, probs):
            order = row.argsort()[::-1][: args.top]
            results.append({"file": f, "top": [{"label": labels[i], "prob": float(row[i])} for i in order]})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(r["file"] + ":  " + "   ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"]))
    sys.stdout.flush()
    for f, msg in failed:
        print(f"error: {msg if f in msg else f'{f}: {msg}'}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {len(args.files)} files could not be read (see above); the others were "
              f"scored", file=sys.stderr)
        return 1
    return 0


def read_labels_file(path: str) -> list[str]:
    """One class name per line (blank lines ignored)."""
    if os.path.isdir(path):
        raise UserError(f"--labels-file {path}: is a directory; expected a text file with one label per line")
    try:
        with open(path, encoding="utf-8") as f:
            return [s.strip() for s in f if s.strip()]
    except FileNotFoundError:
        raise UserError(f"--labels-file {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"--labels-file {path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None

if __name__ == "__main__":
    sys.exit(run_cli(main))
