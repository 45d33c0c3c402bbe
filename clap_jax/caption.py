"""Caption audio files from the command line with captioner weights (msclap's clapcap, or a clap_jax export of it).

  python -m clap_jax.caption --weights clapcap_weights_2023.pth a.wav b.flac
  python -m clap_jax.caption --weights cap/ --beam-size 1 --output captions.csv  clips/*.wav     # greedy, CSV
  python -m clap_jax.caption --weights cap/ --json --beams *.wav                  # every beam with its score

Decoding is msclap's (beam 5, at most 67 tokens, temperature 1, length-normalised scores), batched: all clips of a
batch decode together, jitted and split over the local devices. Prints `FILE: caption` per file (or JSON with
--json); --output writes a .json or .csv file instead (written whole or not at all). With more files than one
batch, progress goes to stderr. A file that cannot be read is reported on stderr (`error: FILE: reason`) while
the others are captioned; the exit status is then 1 (2 for bad weights or arguments).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time

from clap_jax import files
from clap_jax.audio.io import CHANNEL_MODES, CROP_MODES
from clap_jax.errors import UserError, run_cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m clap_jax.caption", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3, ...)")
    p.add_argument("--weights", required=True, help="captioner weights: msclap clapcap .pth/.safetensors or a "
                                                    "clap_jax checkpoint dir")
    p.add_argument("--beam-size", type=int, default=5, help="beams (1 = greedy)")
    p.add_argument("--max-tokens", type=int, default=67, help="most tokens per caption (msclap's entry_length)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (<= 0 means 1)")
    p.add_argument("--batch-size", type=int, default=16, help="clips decoded together")
    p.add_argument("--crop", default="center", choices=list(CROP_MODES),
                   help="window of clips longer than the model's clip")
    p.add_argument("--channel-mode", default="mean", choices=list(CHANNEL_MODES))
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument("--beams", action="store_true", help="include every beam with its score (JSON / .json output)")
    p.add_argument("--output", help="write the captions to this .json or .csv file instead of printing them")
    p.add_argument("--n-head", type=int, default=None,
                   help="GPT-2 heads, for a msclap file not of msclap's own size (which stores no head count)")
    args = p.parse_args(argv)
    if args.output and not args.output.endswith((".json", ".csv")):
        raise UserError(f"--output {args.output}: give a file name ending .json or .csv")
    if args.beam_size < 1 or args.max_tokens < 1 or args.batch_size < 1:
        raise UserError("--beam-size, --max-tokens and --batch-size must be >= 1")

    from clap_jax.audio.io import AudioError
    from clap_jax.convert import load_weights
    from clap_jax.inference import CLAP

    options = {"n_head": args.n_head} if args.n_head is not None else {}
    variables, config = load_weights(args.weights, **options)
    clap = CLAP(variables=variables, config=config, crop=args.crop, channel_mode=args.channel_mode,
                batch_size=args.batch_size)
    if config.get("family") != "msclap-clapcap":
        raise UserError(f"{args.weights}: not captioner weights (model family {config.get('family')!r}); captioning "
                        f"needs msclap's clapcap weights or a conversion of them")
    results, failed = [], []
    n, start = len(args.files), time.time()
    for s in range(0, n, args.batch_size):
        chunk, clips = [], []
        for f in args.files[s:s + args.batch_size]:   # decoded one by one: a bad file costs only its own row
            try:
                clips.append(clap.preprocess_audio([f])[0])
                chunk.append(f)
            except AudioError as e:
                failed.append((f, str(e)))
        if clips:
            beams = clap.generate_caption(clips, beam_size=args.beam_size, entry_length=args.max_tokens,
                                          temperature=args.temperature, sample_rate=clap.sample_rate,
                                          return_beams=True)
            for f, b in zip(chunk, beams):
                row = {"file": f, "caption": b[0][0]}
                if args.beams:
                    row["beams"] = [{"caption": c, "score": sc} for c, sc in b]
                results.append(row)
        if n > args.batch_size:
            done = min(s + args.batch_size, n)
            print(f"captioned {done}/{n} files ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    if args.output:
        files.write_text(args.output, _as_csv(results) if args.output.endswith(".csv") else _as_json(results))
        print(f"wrote {args.output} ({len(results)} captions)", file=sys.stderr)
    elif args.json:
        print(_as_json(results), end="")
    else:
        for r in results:
            print(f"{r['file']}: {r['caption']}")
    sys.stdout.flush()
    for f, msg in failed:
        print(f"error: {msg if f in msg else f'{f}: {msg}'}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {n} files could not be read (see above); the others were captioned",
              file=sys.stderr)
        return 1
    return 0


def _as_json(rows) -> str:
    return json.dumps(rows, indent=1) + "\n"


def _as_csv(rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "caption"])
    for r in rows:
        w.writerow([r["file"], r["caption"]])
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(run_cli(main))
