"""Linear probes (HEAR style): frozen audio embeddings -> a logistic regression (or a one-hidden-layer MLP) per task.

    python -m clap_jax.eval --protocol linear --weights CKPT --data-root DIR [--probe mlp] [--probe-folds 5]

For each classification task the audio embeddings are the ones the zero-shot eval computes and caches (same cache
key: checkpoint, clips, loader settings), so a probe after a zero-shot run embeds nothing again. Retrieval tasks
have no classes to fit and are skipped.

Splits:
  * a dataset that puts its clips in folds (ESC-50's 5 folds, HEAR's fold00..fold04): leave one fold out, train on
    the others, test on it, for every fold; the task's number is the mean over folds (each fold's is kept);
  * otherwise (the built-in suite, datasets read as one test set): a seeded k-fold split (`folds`, default 5),
    stratified by class for single-label tasks, with the same rule.

Fitting: features standardised with the training part's mean and deviation; full-batch Adam on the cross-entropy
(softmax for single-label, per-class sigmoid for multi-label) with an L2 penalty chosen from `L2_GRID` on a held-out
fifth of the training part (then refit on the whole training part). Metrics: accuracy (single-label), macro mAP
(multi-label). The zero-shot number of the same embeddings is written beside the probe's (`zeroshot_acc` /
`zeroshot_mAP`).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clap_jax.eval import metrics
from clap_jax.eval.clips import ClipError, LoaderConfig
from clap_jax.eval.embed import EmbeddingCache, embed_audio, embed_texts
from clap_jax.eval.tasks import REGISTRY, DatasetError
from clap_jax.eval.tasks.base import MULTI, RETRIEVAL, SINGLE
from clap_jax.eval.zeroshot import score_task, texts_for

PROBES = ("logreg", "mlp")
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    probe: str = "logreg"        # logreg | mlp
    folds: int = 5               # k of the seeded k-fold split for tasks whose dataset defines no folds
    seed: int = 0
    steps: int = 500             # full-batch Adam steps per fit
    lr: float = 1e-2
    hidden: int = 256            # MLP hidden width
    l2_grid: tuple = L2_GRID

    def __post_init__(self):
        if self.probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {self.probe!r}")
        if self.folds < 2:
            raise ValueError(f"probe folds must be >= 2, got {self.folds}")


# ------------------------------------------------------------------------------------------------------ splits

def splits(clips: list, kind: str, k: int = 5, seed: int = 0) -> tuple[list, str]:
    """([(fold name, train indices, test indices)], description) over `clips` (positions in the list)."""
    folds = [c.fold for c in clips]
    if all(f is not None for f in folds) and len(set(folds)) >= 2:
        names = sorted(set(folds), key=lambda f: (len(str(f)), str(f)))
        out = [(str(f), np.asarray([i for i, g in enumerate(folds) if g != f]),
                np.asarray([i for i, g in enumerate(folds) if g == f])) for f in names]
        return out, f"the dataset's {len(names)} folds, each held out once"
    n = len(clips)
    if n < k:
        raise ValueError(f"{n} clips: too few for a {k}-fold split")
    rng = np.random.default_rng(seed)
    assign = np.empty(n, np.int64)
    if kind == SINGLE:   # stratified: each class dealt round-robin over the folds from a seeded order
        labels = np.asarray([c.labels[0] for c in clips])
        offset = 0
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            assign[idx] = (np.arange(len(idx)) + offset) % k
            offset += len(idx)
    else:
        assign[rng.permutation(n)] = np.arange(n) % k
    out = [(str(f + 1), np.flatnonzero(assign != f), np.flatnonzero(assign == f)) for f in range(k)]
    return out, f"seeded {k}-fold split (seed {seed}{', stratified by class' if kind == SINGLE else ''})"


# ------------------------------------------------------------------------------------------------------ models

def _init(key, d_in: int, n_out: int, probe: str, hidden: int) -> dict:
    if probe == "logreg":
        return {"w": jnp.zeros((d_in, n_out)), "b": jnp.zeros((n_out,))}
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (d_in, hidden)) * np.sqrt(2.0 / d_in), "b1": jnp.zeros((hidden,)),
            "w2": jax.random.normal(k2, (hidden, n_out)) * np.sqrt(1.0 / hidden), "b2": jnp.zeros((n_out,))}


def _forward(p: dict, x):
    if "w" in p:
        return x @ p["w"] + p["b"]
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _loss(p, x, y, multi: bool, l2):
    logits = _forward(p, x)
    if multi:
        data = optax.sigmoid_binary_cross_entropy(logits, y).mean()
    else:
        data = optax.softmax_cross_entropy(logits, y).mean()
    weights = sum(jnp.sum(v ** 2) for k, v in p.items() if k.startswith("w"))
    return data + l2 * weights


def fit(x: np.ndarray, y: np.ndarray, multi: bool, l2: float, cfg: ProbeConfig):
    """Fit a probe on (N, D) features and (N, C) one-hot / multi-hot targets; returns predict(x) -> (N, C) scores.
    Features are standardised with the training set's statistics."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    params = _init(jax.random.PRNGKey(cfg.seed), x.shape[1], y.shape[1], cfg.probe, cfg.hidden)
    params = _train(params, jnp.asarray((x - mean) / std, jnp.float32), jnp.asarray(y, jnp.float32),
                    jnp.float32(l2), jnp.float32(cfg.lr), multi, cfg.steps)

    def predict(z):
        return np.asarray(_forward(params, jnp.asarray((z - mean) / std, jnp.float32)))
    return predict


@functools.partial(jax.jit, static_argnames=("multi", "steps"))
def _train(params, x, y, l2, lr, multi, steps):
    tx = optax.adam(lr)
    grad = jax.grad(_loss)

    def body(_, carry):
        p, s = carry
        u, s = tx.update(grad(p, x, y, multi, l2), s, p)
        return optax.apply_updates(p, u), s

    params, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
    return params


def _targets(clips, kind: str, n_classes: int) -> np.ndarray:
    y = np.zeros((len(clips), n_classes), np.float32)
    for i, c in enumerate(clips):
        y[i, list(c.labels)] = 1.0
    return y


def _metric(kind: str, scores: np.ndarray, y: np.ndarray) -> float:
    if kind == SINGLE:
        return metrics.accuracy(scores, y.argmax(1))
    return metrics.macro_map(y.astype(bool), scores)


def probe_task(kind: str, emb: np.ndarray, clips: list, n_classes: int, cfg: ProbeConfig) -> dict:
    """Fit and score one task over its splits: {"<metric>": mean over folds, "<metric>_per_fold": {fold: value},
    "l2_per_fold": {fold: chosen L2}, "split": description, "n_clips"}."""
    if kind not in (SINGLE, MULTI):
        raise ValueError(f"a linear probe needs a classification task, not {kind!r}")
    y = _targets(clips, kind, n_classes)
    folds, how = splits(clips, kind, cfg.folds, cfg.seed)
    name = "acc" if kind == SINGLE else "mAP"
    per_fold, chosen = {}, {}
    for fold, tr, te in folds:
        if len(tr) == 0 or len(te) == 0:
            raise ValueError(f"fold {fold} has an empty training or test part")
        # the L2 penalty: chosen on a held-out fifth of the training part (the inner split is seeded too)
        inner, _ = splits([clips[i] for i in tr], kind, 5, cfg.seed + 1) if len(tr) >= 10 else ([], "")
        best, best_l2 = -np.inf, cfg.l2_grid[len(cfg.l2_grid) // 2]
        if inner:
            _, itr, iva = inner[0]
            for l2 in cfg.l2_grid:
                try:
                    v = _metric(kind, fit(emb[tr][itr], y[tr][itr], kind == MULTI, l2, cfg)(emb[tr][iva]), y[tr][iva])
                except ValueError:   # a validation part without any positive for a multi-label task
                    continue
                if v > best:
                    best, best_l2 = v, l2
        predict = fit(emb[tr], y[tr], kind == MULTI, best_l2, cfg)
        per_fold[fold] = _metric(kind, predict(emb[te]), y[te])
        chosen[fold] = best_l2
    return {name: float(np.mean(list(per_fold.values()))), f"{name}_per_fold": per_fold, "l2_per_fold": chosen,
            "split": how, "n_clips": len(clips)}


# ------------------------------------------------------------------------------------------------------ suite

def evaluate_linear(embedder, data_root, tasks="all", config: Optional[dict] = None, cache_dir: Optional[str] = None,
                    loader: LoaderConfig = LoaderConfig(), probe: ProbeConfig = ProbeConfig(), batch_size: int = 64,
                    workers: int = 4, progress: bool = True, skip_bad_clips: bool = False, log=print) -> dict:
    """Linear-probe every selected classification task found under data_root; a results dict in the zero-shot
    eval's format (clap_jax.eval.report writes it), with protocol "linear"."""
    from clap_jax.eval.runner import load_tasks, unknown_task_names

    for name in unknown_task_names(tasks):
        log(f"[eval] WARNING: no reader produces a task named {name!r}")
    cache = EmbeddingCache(cache_dir, getattr(embedder, "cache_id", None))
    task_list, errors, missing = load_tasks(data_root, tasks, config)
    results = {
        "checkpoint": getattr(embedder, "cache_id", None),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data_root": str(data_root), "protocol": "linear", "probe": dataclasses.asdict(probe),
        "logit_scale": float(embedder.logit_scale), "loader": dataclasses.asdict(loader), "batch_size": batch_size,
        "tasks": {}, "errors": {t: msg for name, msg in errors.items() for t in REGISTRY[name].tasks},
        "missing": [{"reader": r.name, "tasks": list(r.tasks), "how_to_get": r.how_to_get} for r in missing],
        "pending": {}, "skipped": {},
    }
    shared_audio = {}
    for task in task_list:
        if task.kind == RETRIEVAL:
            results["skipped"][task.name] = "retrieval: no classes for a probe"
            continue
        t0 = time.time()
        dropped = []

        def on_error(path, exc, _dropped=dropped):
            _dropped.append(str(exc))
            log(f"[eval] {task.name}: skipping unreadable clip: {exc}")
        try:
            paths = tuple(c.path for c in task.clips)
            if paths not in shared_audio:
                shared_audio[paths] = embed_audio(embedder, task.name, list(paths), cache, loader, batch_size,
                                                  workers, progress, on_error=on_error if skip_bad_clips else None)
            emb, kept = shared_audio[paths]
            clips = [task.clips[i] for i in kept]
            m = probe_task(task.kind, np.asarray(emb, np.float32), clips, len(task.classes), probe)
            texts, _ = texts_for(task)
            zs = score_task(task, emb, embed_texts(embedder, task.name, texts, cache), embedder.logit_scale, kept)
            key = "acc" if task.kind == SINGLE else "mAP"
            m[f"zeroshot_{key}"] = float(zs[key])
        except (ClipError, DatasetError, ValueError, RuntimeError) as e:
            results["errors"][task.name] = f"{task.name}: {e}"
            log(f"[eval] ERROR {task.name}: {e}")
            continue
        settings = dict(task.describe(), protocol=f"linear probe ({probe.probe})", split=m.pop("split"))
        entry = {"metrics": m, "settings": settings, "seconds": round(time.time() - t0, 3)}
        if dropped:
            entry["dropped_clips"] = dropped
        results["tasks"][task.name] = entry
        key = "acc" if task.kind == SINGLE else "mAP"
        log(f"[eval] {task.name}: linear {key}={m[key]:.4f} (zero-shot {m['zeroshot_' + key]:.4f}; "
            f"{settings['split']}; {entry['seconds']} s)")
    return results
