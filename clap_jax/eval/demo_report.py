"""The main job's closing report: training curves + held-out zero-shot results, as a PNG and a short summary.

    python -m clap_jax.eval.demo_report RUN_DIR [--out DIR]

Reads what `scripts/main.sh` leaves in RUN_DIR (each part is optional; missing parts are reported as missing):

    run.json        {"batch_size": B, ...} of the training config (chance levels of the curves)
    train/          the trainer's workdir: TensorBoard event files (train/loss, train/acc_a2t, train/acc_t2a, ...)
    train.log       the trainer's log (fallback for the curves when no event file can be read)
    eval/results.json   `python -m clap_jax.eval` output on the built-in tasks
    export/*.pth, export/*.safetensors   the PyTorch (msclap layout) export
    timings.tsv     "stage<TAB>seconds" lines written by main.sh

and writes RUN_DIR/report.png (loss and in-batch train accuracies vs step; zero-shot accuracy per held-out task vs
chance) and RUN_DIR/report.md, and prints the summary. Exit status 0, or 1 when neither curves nor eval results exist.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import struct
import sys

TRAIN_TAGS = ("train/loss", "train/acc_a2t", "train/acc_t2a", "train/lr", "train/logit_scale")
_LOG_LINE = re.compile(r"step (\d+)/\d+ \| loss ([-\d.naif]+) acc a2t ([-\d.naif]+) t2a ([-\d.naif]+)")


# ----------------------------------------------------------------------------------------------- reading

def _records(path: str):
    """Raw records of a TFRecord file (the event file container); stops quietly at a truncated tail."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (n,) = struct.unpack("<Q", head[:8])
            data = f.read(n)
            if len(data) < n or len(f.read(4)) < 4:
                return
            yield data


def _value(v) -> float | None:
    if v.HasField("simple_value"):
        return float(v.simple_value)
    if v.HasField("tensor"):
        t = v.tensor
        if t.float_val:
            return float(t.float_val[0])
        if t.double_val:
            return float(t.double_val[0])
        if t.tensor_content:
            if len(t.tensor_content) == 4:
                return struct.unpack("<f", t.tensor_content)[0]
            if len(t.tensor_content) == 8:
                return struct.unpack("<d", t.tensor_content)[0]
    return None


def read_event_scalars(train_dir: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from every event file under train_dir (later files win on repeated steps, which is
    what a resumed run wants)."""
    out: dict[str, dict[int, float]] = {}
    files = sorted(glob.glob(os.path.join(train_dir, "**", "events.out.tfevents.*"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        return out
    try:
        from tensorboard.compat.proto import event_pb2
    except ImportError:
        return out
    for path in files:
        for rec in _records(path):
            ev = event_pb2.Event()
            try:
                ev.ParseFromString(rec)
            except Exception:  # noqa: BLE001 - a corrupt record: skip it
                continue
            if not ev.HasField("summary"):
                continue
            for v in ev.summary.value:
                x = _value(v)
                if x is not None:
                    out.setdefault(v.tag, {})[int(ev.step)] = x
    return out


def read_log_scalars(log_path: str) -> dict[str, dict[int, float]]:
    """The same curves parsed from the trainer's progress lines ("step N/M | loss L acc a2t A t2a T")."""
    out: dict[str, dict[int, float]] = {}
    if not os.path.exists(log_path):
        return out
    with open(log_path, errors="replace") as f:
        for line in f:
            m = _LOG_LINE.search(line)
            if m:
                step = int(m.group(1))
                for tag, val in zip(("train/loss", "train/acc_a2t", "train/acc_t2a"), m.groups()[1:]):
                    out.setdefault(tag, {})[step] = float(val)
    return out


def read_curves(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    scalars = read_event_scalars(os.path.join(run_dir, "train"))
    if "train/loss" not in scalars:
        scalars = read_log_scalars(os.path.join(run_dir, "train.log"))
    return {k: sorted(v.items()) for k, v in scalars.items()}


def read_eval(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "eval", "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def eval_rows(results: dict | None) -> list[dict]:
    """One row per held-out number: {task, metric, value, chance, n}. Classification: accuracy vs 1/classes;
    retrieval: R@1 and R@10 both ways vs k / number of candidates."""
    rows: list[dict] = []
    if not results:
        return rows
    for name, entry in results.get("tasks", {}).items():
        m, s = entry.get("metrics", {}), entry.get("settings", {})
        short = name.removeprefix("builtin_")
        if "acc" in m and s.get("n_classes"):
            rows.append(dict(task=short, metric="acc", value=float(m["acc"]), chance=1.0 / s["n_classes"],
                             n=int(m.get("n_clips", s.get("n_clips", 0))), classes=int(s["n_classes"])))
        elif s.get("kind") == "retrieval" or any(k.startswith("t2a_") for k in m):
            n_clips, n_caps = int(m.get("n_clips", 0) or 0), int(m.get("n_captions", 0) or 0)
            for direction, cands in (("a2t", n_caps), ("t2a", n_clips)):
                for k in (1, 10):
                    key = f"{direction}_R@{k}"
                    if key in m:
                        # a2t: an audio has 2 correct captions among n_caps; t2a: one correct clip among n_clips
                        hits = 2 if direction == "a2t" and n_caps == 2 * n_clips else 1
                        chance = min(1.0, 1 - math.comb(cands - hits, k) / math.comb(cands, k)) if cands else float("nan")
                        rows.append(dict(task=f"{short} {direction}", metric=f"R@{k}", value=float(m[key]),
                                         chance=chance, n=n_clips, classes=0))
    return rows


def read_run_info(run_dir: str) -> dict:
    """RUN_DIR/run.json (written by main.sh: the training config's batch_size, total_steps, ...) or {}."""
    path = os.path.join(run_dir, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def read_timings(run_dir: str) -> list[tuple[str, float]]:
    path = os.path.join(run_dir, "timings.tsv")
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 2:
                    try:
                        out.append((parts[0], float(parts[1])))
                    except ValueError:
                        pass
    return out


# ----------------------------------------------------------------------------------------------- summary

def _last_mean(points: list[tuple[int, float]], n: int = 3) -> float | None:
    vals = [v for _, v in points[-n:] if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarize(run_dir: str) -> dict:
    curves = read_curves(run_dir)
    results = read_eval(run_dir)
    export = sorted(glob.glob(os.path.join(run_dir, "export", "*.pth"))
                    + glob.glob(os.path.join(run_dir, "export", "*.safetensors")))
    loss = curves.get("train/loss", [])
    return {
        "batch_size": read_run_info(run_dir).get("batch_size"),
        "run_dir": run_dir,
        "curves": curves,
        "final_step": loss[-1][0] if loss else None,
        "first_loss": loss[0][1] if loss else None,
        "final_loss": _last_mean(loss),
        "final_acc_a2t": _last_mean(curves.get("train/acc_a2t", [])),
        "final_acc_t2a": _last_mean(curves.get("train/acc_t2a", [])),
        "eval": eval_rows(results),
        "eval_checkpoint": (results or {}).get("checkpoint"),
        "export": export,
        "timings": read_timings(run_dir),
    }


def _fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def render_markdown(s: dict, png: str | None) -> str:
    lines = [f"# CLAP demo report ({s['run_dir']})", ""]
    if s["final_step"] is not None:
        lines += [f"Training: {s['final_step']} steps; loss {_fmt(s['first_loss'])} (first logged) -> "
                  f"{_fmt(s['final_loss'])} (mean of the last 3 logs); in-batch accuracy audio->text "
                  f"{_fmt(s['final_acc_a2t'])}, text->audio {_fmt(s['final_acc_t2a'])}.", ""]
    else:
        lines += ["Training: no metrics found.", ""]
    if s["eval"]:
        lines += ["Zero-shot on the held-out clips (never trained on):", "",
                  "| task | metric | result | chance | clips |", "|---|---|---|---|---|"]
        for r in s["eval"]:
            label = f"{r['task']} ({r['classes']}-way)" if r["classes"] else r["task"]
            lines.append(f"| {label} | {r['metric']} | {100 * r['value']:.1f}% | {100 * r['chance']:.1f}% | {r['n']} |")
        lines.append("")
    else:
        lines += ["Zero-shot: no eval results found.", ""]
    if s["export"]:
        lines += ["PyTorch export: " + ", ".join(s["export"]), ""]
    if s["timings"]:
        total = sum(t for _, t in s["timings"] if _ != "total") if not any(n == "total" for n, _ in s["timings"]) \
            else dict(s["timings"])["total"]
        lines += ["Wall time: " + ", ".join(f"{n} {t:.0f} s" for n, t in s["timings"] if n != "total")
                  + f"; total {total / 60:.1f} min", ""]
    if png:
        lines += [f"Plot: {png}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- plot

def plot(s: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    ax_loss, ax_acc, ax_eval = axes
    curves = s["curves"]
    if curves.get("train/loss"):
        steps, vals = zip(*curves["train/loss"])
        ax_loss.plot(steps, vals, color="tab:blue", lw=1.8, label="train loss")
        if s.get("batch_size"):
            ax_loss.axhline(math.log(s["batch_size"]), color="gray", ls="--", lw=1,
                            label=f"chance ln({s['batch_size']})")
        ax_loss.set_ylim(bottom=0)
        ax_loss.legend(loc="upper right")
    else:
        ax_loss.text(0.5, 0.5, "no training metrics", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set(title="Contrastive loss", xlabel="step", ylabel="loss")
    ax_loss.grid(alpha=0.3)
    for tag, color, label in (("train/acc_a2t", "tab:orange", "audio→text"),
                              ("train/acc_t2a", "tab:green", "text→audio")):
        if curves.get(tag):
            steps, vals = zip(*curves[tag])
            ax_acc.plot(steps, vals, color=color, lw=1.8, label=label)
    if s.get("batch_size"):
        ax_acc.axhline(1 / s["batch_size"], color="gray", ls="--", lw=1, label=f"chance 1/{s['batch_size']}")
    ax_acc.set(title=f"In-batch train accuracy (batch {s.get('batch_size') or '?'})", xlabel="step",
               ylabel="accuracy", ylim=(0, 1.02))
    ax_acc.grid(alpha=0.3)
    if ax_acc.lines:
        ax_acc.legend(loc="upper left")

    rows = [r for r in s["eval"] if r["classes"] or r["metric"] == "R@10"]  # the table has R@1 too
    if rows:
        labels = [f"{r['task']}\n({r['classes']}-way)" if r["classes"] else
                  f"{r['task'].replace('retrieval ', '')}\nR@10".replace("a2t", "audio→text").replace("t2a", "text→audio")
                  for r in rows]
        x = range(len(rows))
        bars = ax_eval.bar(x, [r["value"] for r in rows], color=["tab:blue" if r["classes"] else "tab:purple"
                                                                  for r in rows], width=0.65, label="demo model")
        ax_eval.bar(x, [r["chance"] for r in rows], width=0.65, fill=False, hatch="//", edgecolor="black",
                    lw=0.8, label="chance")
        for b, r in zip(bars, rows):
            ax_eval.text(b.get_x() + b.get_width() / 2, min(r["value"], 1.0) + 0.015, f"{100 * r['value']:.0f}%",
                         ha="center", va="bottom", fontsize=9)
        ax_eval.set_xticks(list(x), labels, fontsize=8)
        ax_eval.legend(loc="upper right", fontsize=8.5)
    else:
        ax_eval.text(0.5, 0.5, "no eval results", ha="center", va="center", transform=ax_eval.transAxes)
    ax_eval.set(title="Zero-shot on held-out clips", ylabel="accuracy / recall", ylim=(0, 1.12))
    ax_eval.grid(alpha=0.3, axis="y")
    fig.suptitle(f"clap_jax demo — {os.path.basename(os.path.abspath(s['run_dir']))}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clap_jax.eval.demo_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out", help="where report.png / report.md go (default: RUN_DIR)")
    args = ap.parse_args(argv)
    out = args.out or args.run_dir
    os.makedirs(out, exist_ok=True)
    s = summarize(args.run_dir)
    png = plot(s, os.path.join(out, "report.png"))
    md = render_markdown(s, png)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0 if (s["final_step"] is not None or s["eval"]) else 1


if __name__ == "__main__":
    sys.exit(main())
