"""Reports: results.json (every number and the settings behind it), report.md (ours vs CLAP 2023 vs the
literature, per task, with averages) and report.png (bar chart). One or several checkpoints side by side.

    python -m clap_jax.eval.report run_a/results.json run_b/results.json --out compare/
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from clap_jax.eval import paper

RETRIEVAL_METRICS = ("a2t_R@1", "a2t_mAP@10", "t2a_R@1", "t2a_mAP@10")


def _find(result: dict, task: str, metric: str):
    """(value, task name used) for a paper cell: the official-layout task, else its HEAR copy."""
    tasks = result.get("tasks", {})
    names = [task] if task in tasks else []
    names += [n for n, e in tasks.items() if n != task and e["settings"].get("paper_key") == task]
    for name in names:
        v = tasks[name]["metrics"].get(metric)
        if v is not None:
            return float(v), name
    return None, None


def _row_metrics(entry: dict) -> list:
    kind = entry["settings"]["kind"]
    if kind == "retrieval":
        return list(RETRIEVAL_METRICS)
    if kind == "multi_label":
        return ["mAP"] + (["f1"] if "f1" in entry["metrics"] else [])
    if kind == "captioning":
        return [m for m in ("CIDEr-D", "SPICE", "SPIDEr") if m in entry["metrics"]]
    return ["acc"]


def _chance(entry: dict, metric: str):
    s = entry["settings"]
    if s["kind"] == "single_label" and s.get("n_classes"):
        return 1.0 / s["n_classes"]
    return None


def _fmt(v, digits=3):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table_rows(results: list) -> list:
    """One dict per reported number: paper cells first (in Table 2 order), then tasks outside the paper."""
    rows = []
    for e in paper.TABLE2:
        ours, used = [], []
        for r in results:
            v, name = _find(r, e.task, e.metric)
            ours.append(v)
            used.append(name)
        status = None
        if e.task in paper.CAPTIONING_TASKS and all(v is None for v in ours):
            ran = [r["tasks"][e.task] for r in results if e.task in r.get("tasks", {})]
            status = "SPICE not available" if ran and all("spice_error" in x for x in ran) else "pending captioner"
        elif all(v is None for v in ours):
            errs = [r.get("errors", {}).get(e.task) for r in results]
            status = "error" if any(errs) else "not run"
        rows.append({"row": e.row, "task": e.title, "key": e.task, "metric": e.metric, "ours": ours,
                     "used": used, "paper": e.clap2023, "clap2022": paper.clap2022(e.task, e.metric),
                     "benchmark": e.benchmark,
                     "benchmark_source": e.benchmark_source, "random": e.random, "status": status})
    shown = {(name, row["metric"]) for row in rows for name in row["used"] if name}
    extra = {}
    for i, r in enumerate(results):
        for name, entry in r.get("tasks", {}).items():
            for m in _row_metrics(entry):
                if (name, m) in shown:
                    continue
                row = extra.setdefault((name, m), {"row": "", "task": name, "key": name, "metric": m,
                                                    "ours": [None] * len(results), "used": [name] * len(results),
                                                    "paper": None, "clap2022": None, "benchmark": None,
                                                    "benchmark_source": "",
                                                    "random": _chance(entry, m), "status": None})
                row["ours"][i] = entry["metrics"].get(m)
    return rows + [extra[k] for k in sorted(extra)]


def averages(results: list) -> list:
    """Per checkpoint: mean of its Table-2 cells, beside the paper's and the benchmark's mean over the same cells."""
    out = []
    for name, r in zip(_names(results), results):
        cells = [(v, e) for e in paper.TABLE2 for v in [_find(r, e.task, e.metric)[0]] if v is not None]
        if cells:
            out.append({"checkpoint": name, "n_cells": len(cells),
                        "ours": sum(v for v, _ in cells) / len(cells),
                        "paper": sum(e.clap2023 for _, e in cells) / len(cells),
                        "benchmark": sum(e.benchmark for _, e in cells) / len(cells)})
    return out


def _names(results):
    names = []
    for i, r in enumerate(results):
        n = r.get("name") or r.get("checkpoint") or f"run{i}"
        names.append(n if n not in names else f"{n} ({i})")
    return names


def markdown(results: list) -> str:
    names = _names(results)
    lines = ["# Zero-shot evaluation (CLAP 2023 suite)", ""]
    for n, r in zip(names, results):
        lines.append(f"- **{n}**: data root `{r.get('data_root')}`, created {r.get('created')}, "
                     f"loader {r.get('loader')}, logit scale {r.get('logit_scale')}")
    lines += ["", "## Ours vs the paper (Table 2 of arXiv 2309.05767)", "",
              "| # | Task | Metric | " + " | ".join(names) + " | CLAP 2023 (paper) | CLAP 2022 (paper) | Benchmark (source) "
              "| Random |",
              "|---|---|---|" + "---|" * len(names) + "---|---|---|---|"]
    for row in table_rows(results):
        cells = []
        for v, used in zip(row["ours"], row["used"]):
            if v is None:
                cells.append(row["status"] or "—")
            else:
                cells.append(_fmt(v) + (f" ({used})" if used and used != row["key"] else ""))
        bench = f"{_fmt(row['benchmark'])} {row['benchmark_source']}".strip() if row["benchmark"] is not None else "—"
        lines.append(f"| {row['row']} | {row['task']} | {row['metric']} | " + " | ".join(cells)
                     + f" | {_fmt(row['paper'])} | {_fmt(row.get('clap2022'))} | {bench} | {_fmt(row['random'])} |")
    lines += ["", "## Averages", "",
              "| Checkpoint | Table-2 cells run | Ours | CLAP 2023 on the same cells | Benchmark on the same cells |",
              "|---|---|---|---|---|"]
    for a in averages(results):
        lines.append(f"| {a['checkpoint']} | {a['n_cells']} | {_fmt(a['ours'])} | {_fmt(a['paper'])} | {_fmt(a['benchmark'])} |")
    lines += ["", "Paper-level averages (CLAP 2023, Table 2): "
              + "; ".join(f"{k}: " + ", ".join(f"{kk} {vv:.3f}" for kk, vv in v.items())
                          for k, v in paper.AVERAGES.items()), ""]
    lines += ["## Settings behind each number", ""]
    for n, r in zip(names, results):
        lines += [f"### {n}", "", "| Task | Clips | Prompt | Settings |", "|---|---|---|---|"]
        for t, entry in sorted(r.get("tasks", {}).items()):
            s = dict(entry["settings"])
            prompt = s.pop("prompt", "")
            n_clips = entry["metrics"].get("n_clips", s.get("n_clips"))
            s.pop("n_clips", None)
            s.pop("dataset_dir", None)
            extra = ", ".join(f"{k}={v}" for k, v in s.items() if v not in (None, ""))
            if entry.get("dropped_clips"):
                extra += f", dropped {len(entry['dropped_clips'])} unreadable clips"
            lines.append(f"| {t} | {n_clips} | `{prompt}` | {extra} |")
        lines.append("")
        if r.get("errors"):
            messages = list(dict.fromkeys(r["errors"].values()))   # a reader's error is listed once
            lines += ["Errors (these tasks did not run):", ""] + [f"- {m}" for m in messages] + [""]
        if r.get("pending"):
            lines += ["Pending:", ""] + [f"- {k}: {m}" for k, m in r["pending"].items()] + [""]
        if r.get("missing"):
            lines += ["Data not found (what to download and where to put it):", ""]
            lines += [f"- **{m['reader']}** ({', '.join(m['tasks'])}): {m['how_to_get']}" for m in r["missing"]]
            lines.append("")
    lines += laion_section(results, names)
    return "\n".join(lines)


def laion_section(results: list, names: list) -> list[str]:
    """LAION-CLAP's published numbers beside ours, for the cells its paper reports (protocol stated)."""
    lines = ["## LAION-CLAP's published numbers", "",
             f"Zero-shot prompt `{paper.LAION_PROMPT}`, ESC-50 fold 1 only (this suite pools all 5 folds unless run "
             "with LAION's protocol: `clap_jax.eval.paper.LAION_PROTOCOL` as the --config JSON); retrieval as in "
             "Table 2.", "",
             "| Task | Metric | " + " | ".join(names) + " | LAION-CLAP (paper) |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for (task, metric), v in paper.LAION_CLAP.items():
        ours = [_find(r, task, metric)[0] for r in results]
        lines.append(f"| {task} | {metric} | " + " | ".join(_fmt(x) if x is not None else "—" for x in ours)
                     + f" | {_fmt(v)} |")
    return lines + [""]


def bar_chart(results: list, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in table_rows(results) if any(v is not None for v in r["ours"])]
    names = _names(results)
    series = [(n, [r["ours"][i] for r in rows]) for i, n in enumerate(names)]
    series += [("CLAP 2023 (paper)", [r["paper"] for r in rows]), ("Benchmark", [r["benchmark"] for r in rows])]
    x = np.arange(max(1, len(rows)))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(min(22, max(6, 2 + 0.45 * len(rows))), 5.5))
    for k, (label, vals) in enumerate(series):
        ax.bar(x[:len(rows)] + (k - (len(series) - 1) / 2) * width,
               [np.nan if v is None else v for v in vals], width, label=label)
    ax.set_xticks(x[:len(rows)])
    ax.set_xticklabels([f"{r['task']}\n{r['metric']}" for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("Zero-shot: ours vs CLAP 2023" if rows else "Zero-shot: no task ran")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results, out_dir, names=None) -> dict:
    """Write results.json, report.md and report.png for one results dict or a list of them."""
    results = results if isinstance(results, list) else [results]
    if names:
        for r, n in zip(results, names):
            r["name"] = n
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "report.md", "png": out / "report.png"}
    payload = results[0] if len(results) == 1 else {"runs": results}
    payload_rows = {"table": table_rows(results), "averages": averages(results)}
    paths["json"].write_text(json.dumps({**payload, **payload_rows}, indent=2, default=str))
    paths["markdown"].write_text(markdown(results))
    bar_chart(results, paths["png"])
    return paths


def _load(path) -> list:
    d = json.loads(Path(path).read_text())
    return d["runs"] if "runs" in d else [d]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Side-by-side report of saved results.json files.")
    ap.add_argument("results", nargs="+", help="results.json files written by python -m clap_jax.eval")
    ap.add_argument("--names", default=None, help="comma-separated display names, one per run")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    runs = [r for p in a.results for r in _load(p)]
    paths = write_report(runs, a.out, a.names.split(",") if a.names else None)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))


if __name__ == "__main__":
    main()
