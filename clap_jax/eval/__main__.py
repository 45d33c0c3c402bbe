"""python -m clap_jax.eval --weights CKPT [--weights CKPT2] --data-root DIR [--tasks all|a,b] [--out DIR]

Runs every task of the CLAP 2023 zero-shot suite whose data is found under --data-root (plus the built-in
synthetic suite and HEAR-format tasks), lists what to download for the others, and writes results.json,
report.md and report.png to --out. Two or more --weights give a side-by-side report.
--weights takes a clap_jax checkpoint or an msclap .pth (loaded by clap_jax.inference.CLAP); the special value
"random-init" the CLAP architecture with random weights (the random baseline), and "random-hash" a hash
embedder (chance-level numbers, to check the harness without the model package).
`--list` only prints which datasets are found. `--protocol linear` fits a probe (logistic regression, or `--probe
mlp`) per classification task on the frozen audio embeddings instead of prompting (clap_jax/eval/linear.py).
`--protocol laion` is LAION-CLAP's zero-shot protocol (its prompt for every task, ESC-50 fold 1 only).
--weights and --out may be bucket URLs (gs://..., s3://...): a training workdir there is read in place, other
weights are downloaded first; the report is uploaded into --out.

Exit status: 0 when every requested task ran (with `--tasks all`, datasets absent from --data-root are listed and
are not failures as long as one task ran); 1 when a task failed or a task named in --tasks produced nothing (each
is listed on stderr; the report is still written); 2 for bad arguments or weights (one `error:` line).
"""
from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports below: the re-exec would otherwise pay for them twice
    from clap_jax import hostmem

    hostmem.reexec_with_hugepages()  # 2 MiB pages for XLA's per-step host buffers (clap_jax/hostmem.py)

import argparse
import json
import os
import sys
from pathlib import Path

from clap_jax.audio.io import CHANNEL_MODES, CROP_MODES
from clap_jax.errors import UserError, run_cli
from clap_jax.eval.clips import LoaderConfig



def _write_report(write_report, runs, out: str) -> dict:
    """The report into --out; a bucket URL (gs://, s3://) gets it written locally and uploaded, one put a file."""
    from clap_jax import files

    if not files.is_url(out):
        return write_report(runs, out)
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="clap_jax_eval_out_")
    try:
        local = write_report(runs, tmp)
        files.upload(tmp, out)
        return {k: files.join(out, os.path.basename(str(v))) for k, v in local.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_cache_dir() -> str:
    return os.environ.get("CLAP_JAX_EVAL_CACHE", str(Path.home() / ".cache" / "clap_jax" / "eval_embeddings"))


def load_embedder(weights: str, tokenizer: str | None = None, dtype: str | None = None):
    """The model behind --weights; imported lazily so the harness works (and tests run) without it. `tokenizer`:
    the text vocabulary source (--tokenizer), for a family whose vocabulary the user supplies (msclap-2022);
    `dtype`: the towers' compute dtype (--dtype; bfloat16 embeddings are cached apart from float32 ones)."""
    from clap_jax.eval.embed import weights_cache_id

    if weights == "random-hash":
        from clap_jax.eval.fake import RandomEmbedder
        return RandomEmbedder(cache_id="random-hash")
    from clap_jax.inference import CLAP  # the model package (clap_jax/inference.py)

    if weights == "random-init":   # the real architecture, randomly initialised: the random baseline
        model = CLAP(weights=None)
        model.cache_id = "random-init"
        return model
    from clap_jax.convert import CheckpointError

    try:
        model = CLAP(weights=weights, tokenizer=tokenizer, dtype=dtype)
    except CheckpointError as e:   # its message starts with the path: say which argument it came from
        raise CheckpointError(f"--weights {e}") from e
    if not getattr(model, "cache_id", None):
        try:
            model.cache_id = weights_cache_id(weights)
        except (AttributeError, OSError):
            pass
    if dtype not in (None, "float32") and getattr(model, "cache_id", None):
        model.cache_id += f"-{dtype}"
    return model


def _parse_kv(items, what):
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"--{what} expects NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


def build_config(args) -> dict:
    """--protocol laion's settings (clap_jax.eval.paper.LAION_PROTOCOL), then --config, --prompt, --option over
    them."""
    config = {}
    if getattr(args, "protocol", None) == "laion":
        from clap_jax.eval.paper import LAION_PROTOCOL

        config = json.loads(json.dumps(LAION_PROTOCOL))
    if args.config:
        base = config
        try:
            config = json.loads(Path(args.config).read_text())
        except FileNotFoundError:
            raise UserError(f"--config {args.config}: no such file") from None
        except (IsADirectoryError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"--config {args.config}: not a JSON file ({e})") from None
        if not isinstance(config, dict):
            raise UserError(f"--config {args.config}: expected a JSON object, got {type(config).__name__}")
        for key in ("prompts", "options"):   # the file's entries over the protocol's
            if key in base and isinstance(config.get(key, {}), dict):
                config[key] = {**base[key], **config.get(key, {})}
    config.setdefault("prompts", {}).update(_parse_kv(args.prompt, "prompt"))
    if getattr(args, "spice_jar", None):
        config["spice_jar"] = args.spice_jar
    for key, value in _parse_kv(args.option, "option").items():
        if "." not in key:
            raise UserError(f"--option expects READER.KEY=VALUE (e.g. dcase17.split=testing), got {key!r}")
        reader, opt = key.split(".", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        config.setdefault("options", {}).setdefault(reader, {})[opt] = value
    return config


def parser():
    ap = argparse.ArgumentParser(prog="python -m clap_jax.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", action="append", help="checkpoint or msclap .pth; repeat to compare")
    ap.add_argument("--name", action="append", help="display name per --weights (default: file name)")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--tokenizer", default=None,
                    help="text vocabulary: a directory / file / cached hub name (BERT's vocab.txt for msclap-2022 "
                         "weights; GPT-2 BPE files for 2023, default bundled)")
    ap.add_argument("--tasks", default="all", help="'all' or comma-separated task/reader names")
    ap.add_argument("--out", default="runs/eval")
    ap.add_argument("--config", help="JSON file: {prompts: {task: template}, options: {reader: {...}}, "
                                     "threshold_rule: {task: rule}, labels: {task: {word: replacement}}}")
    ap.add_argument("--prompt", action="append", help="TASK=TEMPLATE with {label}, e.g. esc50='a {label} sound'")
    ap.add_argument("--option", action="append", help="READER.KEY=VALUE, e.g. dcase17.split=testing")
    ap.add_argument("--crop", default="center", choices=list(CROP_MODES),
                    help="window of clips longer than the model's clip (random: seeded per clip by --seed; "
                         "unseeded: msclap's own random crop)")
    ap.add_argument("--seed", type=int, default=0, help="seed for --crop random")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="compute dtype of the towers (bfloat16: faster on TPUs/GPUs, embeddings within ~1e-3 "
                         "cosine of float32; on CPUs measure first: bench/bench_embed.py --dtype bfloat16)")
    ap.add_argument("--channels", default="mean", choices=list(CHANNEL_MODES),
                    help="mean: mono down-mix; concat: msclap's channels one after another; first: channel 0")
    ap.add_argument("--duration", type=float, default=None,
                    help="clip seconds (default: the model's own config.audio.duration; 7 s for msclap 2023)")
    ap.add_argument("--spice-jar", default=None, help="SPICE's spice-1.0.jar (CoreNLP 3.6.0 jars in lib/ beside it) "
                    "for the captioning tasks (captioner weights); clap_jax/eval/spice.py says where it is looked for")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="decoding threads")
    ap.add_argument("--cache-dir", default=None, help=f"embedding cache (default {default_cache_dir()})")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--skip-bad-clips", action="store_true", help="drop unreadable clips instead of failing the task")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--list", action="store_true", help="only list which datasets are found under --data-root")
    ap.add_argument("--protocol", default="zeroshot", choices=("zeroshot", "linear", "laion"),
                    help="zeroshot: class prompts (the paper's protocol); linear: a probe fitted on the frozen, cached "
                         "audio embeddings per task (clap_jax/eval/linear.py), its zero-shot number beside it; "
                         "laion: LAION-CLAP's zero-shot protocol (prompt 'This is a sound of {label}.' for every "
                         "task, ESC-50 fold 1 only; --config/--prompt/--option apply over it)")
    ap.add_argument("--probe", default="logreg", choices=("logreg", "mlp"), help="--protocol linear: the probe")
    ap.add_argument("--probe-folds", type=int, default=5,
                    help="--protocol linear: k of the seeded k-fold split for tasks whose dataset defines no folds")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from clap_jax.eval.report import write_report
    from clap_jax.eval.runner import discover, evaluate, requested_failures

    root = Path(args.data_root)
    if not root.is_dir():
        raise UserError(f"--data-root {args.data_root}: " + ("not a directory" if root.exists() else
                        "directory does not exist") + "; give the folder that holds the evaluation datasets")
    config = build_config(args)
    if args.list:
        found, missing = discover(args.data_root, args.tasks, config)
        for reader, path in found:
            print(f"found    {reader.name:20s} {path}")
        for reader in missing:
            print(f"missing  {reader.name:20s} {reader.how_to_get}")
        return 0
    if not args.weights:
        raise UserError("--weights is required: a clap_jax checkpoint directory, a training workdir or a msclap "
                        ".pth/.safetensors (or use --list)")
    config = build_config(args)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    embedders = [load_embedder(w) if args.tokenizer is None and args.dtype == "float32" else
                 load_embedder(w, tokenizer=args.tokenizer, dtype=args.dtype)
                 for w in args.weights]   # every --weights is checked before any compute
    runs = []
    for i, (w, embedder) in enumerate(zip(args.weights, embedders)):
        # A model is evaluated at the clip length and rate it was built for (HTSAT stretches every clip to one
        # image, so a 2.5 s model fed 7 s of repeat-padded audio sees a different time scale).
        audio_cfg = getattr(getattr(embedder, "config", None), "audio", None)
        duration = args.duration or (float(audio_cfg.duration) if audio_cfg is not None else 7.0)
        rate = int(audio_cfg.sample_rate) if audio_cfg is not None else 44100
        loader = LoaderConfig(sample_rate=rate, duration=duration, crop=args.crop, channels=args.channels,
                              seed=args.seed)
        kw = dict(tasks=args.tasks, config=config, cache_dir=cache_dir, loader=loader, batch_size=args.batch_size,
                  workers=args.workers, progress=not args.no_progress, skip_bad_clips=args.skip_bad_clips)
        if args.protocol == "linear":
            from clap_jax.eval.linear import ProbeConfig, evaluate_linear
            try:
                probe = ProbeConfig(probe=args.probe, folds=args.probe_folds, seed=args.seed)
            except ValueError as e:
                raise UserError(f"--probe-folds: {e}") from None
            r = evaluate_linear(embedder, args.data_root, probe=probe, **kw)
        else:
            r = evaluate(embedder, args.data_root, **kw)
        r["weights"] = w
        r["name"] = args.name[i] if args.name and i < len(args.name) else Path(w).name
        if args.protocol == "linear" and not (args.name and i < len(args.name)):
            r["name"] += f" (linear probe, {args.probe})"
        r["config"] = config
        runs.append(r)
    paths = _write_report(write_report, runs, args.out)
    for r in runs:
        for m in r["missing"]:
            print(f"[eval] not found: {m['reader']} ({', '.join(m['tasks'])}): {m['how_to_get']}")
    print("\n".join(f"[eval] wrote {k}: {v}" for k, v in paths.items()))
    sys.stdout.flush()
    failed = []
    for r in runs:
        who = f" ({r['name']})" if len(runs) > 1 else ""
        failed += [f"{msg}{who}" for msg in requested_failures(r, args.tasks).values()]
    for msg in failed:
        print(f"[eval] FAILED {msg}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} requested task(s) failed (listed above); the report covers the others",
              file=sys.stderr)
        return 1
    if not any(r["tasks"] for r in runs):
        print(f"error: no task ran: none of the requested datasets was found under {args.data_root} (see the "
              f"'not found' lines above, or --list)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
