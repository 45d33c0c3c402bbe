"""Zero-shot classification of audio files from the command line.

  python -m clap_jax.classify --weights CLAP_weights_2023.pth --labels "dog,rain,siren" a.wav b.flac
  python -m clap_jax.classify --weights ckpt/ --labels-file classes.txt --prompt "this is the sound of " *.wav

Prints, per file, the top labels with their probabilities (softmax over `prompt + label`), and with --json a
machine-readable list.
"""
from __future__ import annotations

import argparse
import json
import sys

from clap_jax.audio.io import CHANNEL_MODES, CROP_MODES


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
    args = p.parse_args(argv)

    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    else:
        labels = [s.strip() for s in open(args.labels_file) if s.strip()]
    if not labels:
        p.error("no labels given")

    from clap_jax.audio.io import AudioError
    from clap_jax.convert.msclap import CheckpointError
    from clap_jax.inference import CLAP

    try:
        clap = CLAP(args.weights, crop=args.crop, channel_mode=args.channel_mode)
        probs = clap.classify(args.files, labels, prompt=args.prompt)
    except (AudioError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = []
    for f, row in zip(args.files, probs):
        order = row.argsort()[::-1][: args.top]
        results.append({"file": f, "top": [{"label": labels[i], "prob": float(row[i])} for i in order]})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(r["file"] + ":  " + "   ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
