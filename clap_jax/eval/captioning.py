"""The suite's captioning tasks: AudioCaps and Clotho clips captioned by a captioner (msclap's clapcap weights),
scored against their reference captions with CIDEr-D, SPICE and SPIDEr = (CIDEr-D + SPICE) / 2, and beside them
BLEU-1..4, METEOR and ROUGE-L from the COCO caption tools (pycocoevalcap; METEOR runs its bundled Java jar).

The clips and references come from the same readers as the retrieval tasks (clap_jax.eval.tasks.captions).
SPICE runs through its Java scorer (clap_jax.eval.spice); when it cannot run, the task reports CIDEr-D alone, the
reason under "spice_error", and no SPIDEr.
"""
from __future__ import annotations

import time
from typing import Optional

from clap_jax.eval import metrics
from clap_jax.eval import spice as spice_lib
from clap_jax.eval.tasks import REGISTRY, DatasetError

# reader -> the captioning task it feeds
READERS = {"audiocaps": "audiocaps_captioning", "clotho": "clotho_captioning"}
METRICS = ("CIDEr-D", "SPICE", "SPIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L")


def is_captioner(model) -> bool:
    return getattr(getattr(model, "config", None), "get", lambda *_: None)("family") == "msclap-clapcap"


def coco_scores(candidates: list[str], references: list[list[str]], meteor: bool = True) -> dict:
    """BLEU-1..4, METEOR and ROUGE-L of the COCO caption tools (pycocoevalcap) over the corpus; captions are
    tokenised as for CIDEr-D (lower case, punctuation dropped) and joined by spaces, as the tools expect after
    their PTB tokenizer. A scorer that cannot run (pycocoevalcap not installed, no Java for METEOR) leaves its
    metrics out and says why under 'coco_error'."""
    if len(candidates) != len(references):
        raise ValueError(f"coco_scores: {len(candidates)} candidates but {len(references)} reference lists")
    out, errors = {}, []
    if not candidates:
        return out
    res = {i: [" ".join(metrics.tokenize_caption(c)) or "."] for i, c in enumerate(candidates)}
    gts = {i: [" ".join(metrics.tokenize_caption(r)) or "." for r in rs] for i, rs in enumerate(references)}
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as e:
        return {"coco_error": f"BLEU, METEOR and ROUGE-L need pycocoevalcap (pip install pycocoevalcap): {e}"}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if meteor:
        try:
            out["METEOR"] = _meteor(gts, res)
        except (OSError, ValueError, RuntimeError) as e:
            errors.append(f"METEOR could not run (it needs Java 8+ on PATH): {e}")
    if errors:
        out["coco_error"] = "; ".join(errors)
    return out


def _meteor(gts: dict, res: dict) -> float:
    import shutil

    from pycocoevalcap.meteor.meteor import Meteor

    if shutil.which("java") is None:
        raise OSError("no 'java' on PATH")
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:   # the scorer's Java process ends here, not whenever the garbage collector gets to it
        proc = scorer.meteor_p
        with scorer.lock:
            for f in (proc.stdin, proc.stdout, proc.stderr):
                f.close()
            proc.kill()
            proc.wait()
    return float(score)


def score_captions(candidates: list[str], references: list[list[str]], spice_jar: Optional[str] = None) -> dict:
    """{'CIDEr-D', 'SPICE', 'SPIDEr', 'BLEU-1'..'BLEU-4', 'METEOR', 'ROUGE-L'} — SPICE and SPIDEr only when SPICE
    ran, else 'spice_error' says why; the COCO metrics that could not run are named under 'coco_error'."""
    out = {"CIDEr-D": metrics.cider_d(candidates, references)}
    out.update(coco_scores(candidates, references))
    try:
        out["SPICE"], _ = spice_lib.spice(candidates, references, jar=spice_jar)
        out["SPIDEr"] = spice_lib.spider(out["CIDEr-D"], out["SPICE"])
    except spice_lib.SpiceError as e:
        out["spice_error"] = str(e)
    return out


def wanted_tasks(tasks) -> dict:
    """{reader name: captioning task} selected by a --tasks spec ('all', or names of readers / captioning tasks)."""
    if tasks is None or tasks == "all" or tasks == ["all"]:
        return dict(READERS)
    names = {s.strip() for s in (tasks.split(",") if isinstance(tasks, str) else tasks) if s.strip()}
    return {r: t for r, t in READERS.items() if r in names or t in names}


def evaluate_captioning(captioner, data_root, tasks="all", options: Optional[dict] = None,
                        spice_jar: Optional[str] = None, batch_size: int = 16, beam_size: int = 5,
                        progress: bool = True, log=print) -> dict:
    """Caption every selected captioning dataset found under data_root and score it.
    -> {"tasks": {name: entry}, "errors": {name: message}, "missing": [...]}."""
    from pathlib import Path

    options = options or {}
    out = {"tasks": {}, "errors": {}, "missing": []}
    for reader_name, task_name in wanted_tasks(tasks).items():
        reader = REGISTRY[reader_name]
        path = reader.locate(Path(data_root))
        if path is None:
            out["missing"].append({"reader": reader.name, "tasks": [task_name], "how_to_get": reader.how_to_get})
            continue
        t0 = time.time()
        try:
            (task,) = reader.read(path, options.get(reader.name, {}))
            clips = task.clips
            paths = [c.path for c in clips]
            captions = []
            for s in range(0, len(paths), batch_size):
                captions += captioner.generate_caption(paths[s:s + batch_size], beam_size=beam_size)
                if progress:
                    log(f"[eval] {task_name}: captioned {len(captions)}/{len(paths)} clips")
            scores = score_captions(captions, [list(c.captions) for c in clips], spice_jar)
        except (DatasetError, ValueError, OSError) as e:
            out["errors"][task_name] = f"{task_name}: {e}"
            log(f"[eval] ERROR {task_name}: {e}")
            continue
        m = {k: float(v) for k, v in scores.items() if k in METRICS}
        entry = {"metrics": m, "seconds": round(time.time() - t0, 3),
                 "settings": {"kind": "captioning", "n_clips": len(clips), "paper_key": task_name,
                              "beam_size": beam_size, "dataset_dir": str(path), **task.settings},
                 "captions": [{"file": p, "caption": c} for p, c in zip(paths, captions)]}
        if "coco_error" in scores:
            entry["coco_error"] = scores["coco_error"]
        if "spice_error" in scores:
            entry["spice_error"] = scores["spice_error"]
            log(f"[eval] {task_name}: SPICE not computed, so no SPIDEr: {scores['spice_error']}")
        out["tasks"][task_name] = entry
        log(f"[eval] {task_name}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items()) + f" ({len(clips)} clips)")
    return out
