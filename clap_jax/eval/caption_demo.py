"""The main job's captioning check: a captioner trained on the built-in synthetic data writes captions for the
held-out clips, scored against their two reference captions (CIDEr-D, BLEU-1..4, METEOR, ROUGE-L) and by how
often the caption names the clip's sound (one of the 8 classes, by any of the phrases the data's captions use for
it, and no other class); beside it the baseline that writes the most common training caption for every clip.

    python -m clap_jax.eval.caption_demo --weights runs/demo/caption --data-root runs/demo/data \
        --out runs/demo/caption_eval
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import time

from clap_jax import files
from clap_jax.errors import UserError, run_cli


def sound_named(caption: str, sound_words: dict[str, list[str]]) -> str | None:
    """The one sound class whose phrases appear in `caption` (case-insensitive), or None (none, or several)."""
    text = caption.lower()
    hits = {c for c, phrases in sound_words.items()
            if any(p.split("'")[0].strip() and p.split("'")[0].strip() in text for p in phrases)}
    return hits.pop() if len(hits) == 1 else None


def most_common_caption(manifest: str) -> str:
    """The most frequent caption of a preprocessing manifest (JSON lines with 'captions'); ties: the first seen."""
    counts: collections.Counter = collections.Counter()
    with open(manifest) as f:
        for line in f:
            if line.strip():
                counts.update(json.loads(line)["captions"])
    if not counts:
        raise UserError(f"{manifest}: no captions")
    return counts.most_common(1)[0][0]


def score(captions: list[str], clips: list[dict], sound_words) -> dict:
    from clap_jax.eval import captioning, metrics

    refs = [list(c["captions"]) for c in clips]
    out = {"CIDEr-D": float(metrics.cider_d(captions, refs))}
    out.update(captioning.coco_scores(captions, refs))
    right = [sound_named(cap, sound_words) == c["labels"]["sound"] for cap, c in zip(captions, clips)]
    out["names_right_sound"] = sum(right) / max(len(right), 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clap_jax.eval.caption_demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="the captioner: a training workdir or checkpoint")
    ap.add_argument("--data-root", required=True, help="the built-in dataset (eval_tasks.json, train.jsonl)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--beam-size", type=int, default=3)
    ap.add_argument("--max-clips", type=int, default=0, help="caption only the first N held-out clips (0: all)")
    args = ap.parse_args(argv)

    from clap_jax.data import synthetic
    from clap_jax.inference import CLAP

    tasks_path = os.path.join(args.data_root, "eval_tasks.json")
    manifest = os.path.join(args.data_root, "train.jsonl")
    for p in (tasks_path, manifest):
        if not os.path.isfile(p):
            raise UserError(f"{p}: not found (build the data with python -m clap_jax.data.synthetic)")
    clips = json.load(open(tasks_path))["clips"]
    clips = clips[:args.max_clips] if args.max_clips else clips
    sound_words = {c: w for c, w in synthetic._SOUND_WORDS.items() if c in synthetic.SOUNDS}

    t0 = time.time()
    cap = CLAP(args.weights)
    steps = int(cap.config.caption.max_steps)
    paths = [os.path.join(args.data_root, c["path"]) for c in clips]
    captions = cap.generate_caption(paths, beam_size=args.beam_size, entry_length=steps)
    seconds = time.time() - t0
    baseline = most_common_caption(manifest)
    result = {"n_clips": len(clips), "beam_size": args.beam_size, "caption_seconds": round(seconds, 1),
              "captioner": score(captions, clips, sound_words),
              "baseline": score([baseline] * len(clips), clips, sound_words),
              "baseline_caption": baseline, "chance_names_right_sound": 1 / len(sound_words),
              "examples": [{"file": c["path"], "sound": c["labels"]["sound"], "caption": t,
                            "references": c["captions"]} for c, t in zip(clips[:12], captions[:12])]}
    files.makedirs(args.out, exist_ok=True)
    files.write_text(os.path.join(args.out, "caption_eval.json"), json.dumps(result, indent=1))
    keys = [k for k in ("names_right_sound", "CIDEr-D", "BLEU-1", "BLEU-4", "METEOR", "ROUGE-L")
            if k in result["captioner"]]
    lines = [f"# Captioner on {len(clips)} held-out clips (beam {args.beam_size})", "",
             "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name in ("captioner", "baseline"):
        lines.append(f"| {name} | " + " | ".join(f"{result[name][k]:.3f}" for k in keys) + " |")
    lines += ["", f"baseline: always \"{baseline}\"; chance of naming the right sound {1 / len(sound_words):.3f}",
              "", "examples (sound: generated caption):"]
    lines += [f"- {e['sound']}: {e['caption']}" for e in result["examples"]]
    for name in ("captioner", "baseline"):
        if "coco_error" in result[name]:
            lines.append(f"\n{name}: {result[name]['coco_error']}")
    files.write_text(os.path.join(args.out, "caption_eval.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
