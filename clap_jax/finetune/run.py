"""Fine-tune the audio tower + a head on one task of the eval suite, per fold, with checkpoints and exact resume.

    workdir/fold_<f>/checkpoints/<step>/   orbax (clap_jax.train.checkpoint): step, params, batch_stats, opt_state
    workdir/fold_<f>/result.json           the fold's test accuracy once it is done (a rerun skips the fold)
    workdir/zero_shot/results.json         the same weights zero-shot on the same clips (config.zero_shot)
    workdir/report/                        results.json, report.md, report.png (clap_jax.eval.report): zero-shot
                                           and fine-tuned side by side

The batches are a pure function of (seed, fold, step): each epoch is a seeded permutation of the fold's training
clips, and every random draw of a step (mixup, SpecAugment, dropout) comes from `fold_in(key, step)`. A checkpoint
therefore holds all the run's state, and a run stopped at any point and restarted continues bit for bit.
Clips are decoded once per run (clap_jax.eval.clips: the model's rate and clip length, repeat-padded) and kept in
host memory.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from clap_jax import files
from clap_jax.convert import load_weights
from clap_jax.convert.tree import check_tree
from clap_jax.errors import ConfigError, UserError
from clap_jax.eval.clips import LoaderConfig, iter_batches
from clap_jax.eval.linear import splits
from clap_jax.eval.tasks.base import SINGLE
from clap_jax.finetune import config as config_lib
from clap_jax.finetune.model import Classifier, make_optimizer, mixup
from clap_jax.models import config as model_config_lib
from clap_jax.models import registry
from clap_jax.train import checkpoint as ckpt_lib
from clap_jax.train import sharding as shd
from clap_jax.train.flops import fmt_duration

log = logging.getLogger("clap_jax.finetune")


@dataclasses.dataclass
class Prepared:
    """Everything a fold needs that does not depend on the fold."""
    config: Any
    model_config: Any
    task: Any
    wav: np.ndarray                 # (N, samples) float32, every clip of the task
    labels: np.ndarray              # (N,) class indices
    folds: list                     # [(name, train idx, test idx)]
    split: str
    pretrained: dict                # the weights' variables
    mesh: Any
    fold_number: dict               # fold name -> its position among all the task's folds


def load_task(c):
    """The task named by c.task from the eval readers under c.data_root (single-label only)."""
    from clap_jax.eval.runner import load_tasks

    tasks, errors, _ = load_tasks(c.data_root, c.task, {"options": c.reader_options.to_dict()})
    if errors:
        raise UserError("; ".join(errors.values()))
    found = [t for t in tasks if t.name == c.task] or [t for t in tasks if t.paper_key == c.task]
    if not found:
        raise UserError(f"--task {c.task}: no such task found under {c.data_root} (python -m clap_jax.eval --list "
                        f"--data-root {c.data_root} shows what is there)")
    task = found[0]
    if task.kind != SINGLE:
        raise UserError(f"--task {c.task}: fine-tuning supports single-label tasks; this one is {task.kind}")
    return task


def prepare(c) -> Prepared:
    config_lib.validate(c)
    task = load_task(c)
    variables, mcfg = load_weights(c.weights)
    if not hasattr(registry.build_model(mcfg), "encode_audio"):
        raise ConfigError(f"--weights {c.weights}: its model family has no encode_audio")
    if c.specaug:
        if "specaug" not in mcfg.audio:
            raise ConfigError(f"config.specaug: the {mcfg.get('family', 'msclap-2023')} audio tower has no SpecAugment")
        mcfg.audio.specaug = True
    elif "specaug" in mcfg.audio:
        mcfg.audio.specaug = False
    model_config_lib.validate(mcfg)
    n_dev = jax.device_count()
    if c.batch_size % n_dev or c.eval_batch_size % n_dev:
        raise ConfigError(f"config.batch_size ({c.batch_size}) and config.eval_batch_size ({c.eval_batch_size}) "
                          f"must be multiples of the {n_dev} devices")
    loader = LoaderConfig(sample_rate=int(mcfg.audio.sample_rate), duration=float(mcfg.audio.duration), crop=c.crop,
                          seed=c.seed)
    t0 = time.time()
    wav = np.zeros((len(task.clips), loader.num_samples), np.float32)
    for idx, batch in iter_batches([cl.path for cl in task.clips], loader, 64, c.workers):
        wav[idx] = batch
    log.info("%s: %d clips decoded in %.1f s (%.2f GB in memory)", task.name, len(task.clips), time.time() - t0,
             wav.nbytes / 1e9)
    folds, how = splits(task.clips, SINGLE, c.folds, c.seed)
    fold_number = {f: i for i, (f, _, _) in enumerate(folds)}   # seeds a fold's draws whichever folds run
    if c.only_folds:
        unknown = sorted(set(c.only_folds) - {f for f, _, _ in folds})
        if unknown:
            raise ConfigError(f"config.only_folds: no fold(s) {unknown} (folds: {[f for f, _, _ in folds]})")
        folds = [f for f in folds if f[0] in set(c.only_folds)]
    mesh = shd.make_mesh({"data": -1})
    return Prepared(c, mcfg, task, wav, np.asarray([cl.labels[0] for cl in task.clips]), folds, how, variables, mesh,
                    fold_number)


def _initial_variables(prep: Prepared, abstract: dict) -> tuple[dict, dict]:
    """(variables, fixed collections) of the classifier: the pretrained audio tower under `clap`, the head at its
    initialisation (zeros). Built from shapes only: nothing is compiled."""
    out = {}
    for col, tree in abstract.items():
        rest = {k: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v) for k, v in tree.items() if k != "clap"}
        if "clap" not in tree:
            out[col] = rest
            continue
        have = prep.pretrained.get(col, {})
        sub = {k: have[k] for k in tree["clap"] if k in have}
        check_tree(sub, tree["clap"], f"--weights {prep.config.weights} ({col})", what="the fine-tuning model")
        out[col] = dict(rest, clap=jax.tree.map(lambda x, s: jnp.asarray(x, s.dtype), sub, tree["clap"]))
    fixed = {k: v for k, v in out.items() if k not in ("params", "batch_stats")}
    return out, fixed


def _batch_indices(seed: int, fold: int, step: int, train_idx: np.ndarray, batch: int) -> np.ndarray:
    """Training clips of `step` (0-based): epochs are seeded permutations; a batch never spans two epochs."""
    per_epoch = max(1, len(train_idx) // batch)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, fold, epoch]).permutation(len(train_idx))
    if len(train_idx) < batch:   # fewer clips than a batch: repeat the permutation
        perm = np.resize(perm, batch)
    return train_idx[perm[k * batch:(k + 1) * batch]]


_ENGINES: dict = {}


def _engine(prep: Prepared):
    """(model, abstract variables, tx, jitted train step, jitted predict), made once per distinct setting in a
    process: the folds of a run, and reruns in the same process, reuse the compiled steps."""
    c, n_cls = prep.config, len(prep.task.classes)
    key = json.dumps([prep.model_config.to_json(), n_cls, c.head_input, c.head_dropout, c.optim.to_json(),
                      c.mixup.to_json(), c.steps, c.batch_size, c.eval_batch_size, prep.wav.shape[1],
                      [str(d) for d in prep.mesh.devices.flat]])
    if key in _ENGINES:
        return _ENGINES[key]
    model = Classifier(prep.model_config, n_cls, c.head_input, c.head_dropout)
    abstract = jax.eval_shape(lambda r: model.init({"params": r}, jnp.zeros((1, prep.wav.shape[1]), jnp.float32)),
                              jax.random.PRNGKey(0))
    tx, schedule = make_optimizer(c.optim, abstract["params"], c.steps)
    rep = NamedSharding(prep.mesh, P())
    bsh = shd.batch_sharding(prep.mesh)
    mix_alpha, mix_prob = float(c.mixup.alpha), float(c.mixup.prob)

    def train_step(state, fixed, wav, labels, key):
        k_mix, k_drop, k_aug = jax.random.split(jax.random.fold_in(key, state["step"]), 3)
        y = jax.nn.one_hot(labels, n_cls)
        if mix_alpha > 0:
            wav, y, _, _ = mixup(k_mix, wav, y, mix_alpha, mix_prob)

        def loss_fn(params):
            logits, mut = model.apply({"params": params, "batch_stats": state["batch_stats"], **fixed}, wav,
                                      train=True, rngs={"dropout": k_drop, "augment": k_aug},
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy(logits, y).mean(), (logits, mut)

        (loss, (logits, mut)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
               "batch_stats": mut.get("batch_stats", state["batch_stats"]), "opt_state": opt_state}
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return new, {"loss": loss, "acc": acc, "lr": schedule(state["step"]), "grad_norm": optax.tree.norm(grads)}

    def predict(state, fixed, wav):
        return model.apply({"params": state["params"], "batch_stats": state["batch_stats"], **fixed}, wav, train=False)

    train = jax.jit(train_step, in_shardings=(rep, rep, bsh, bsh, rep), out_shardings=(rep, rep), donate_argnums=(0,))
    pred = jax.jit(predict, in_shardings=(rep, rep, bsh), out_shardings=rep)
    _ENGINES[key] = (model, abstract, tx, train, pred)
    return _ENGINES[key]


def run_fold(prep: Prepared, fold_pos: int, on_checkpoint: Optional[Callable[[int], None]] = None) -> dict:
    """Train and test one fold (resuming from its newest checkpoint); returns the fold's result."""
    c = prep.config
    name, train_idx, test_idx = prep.folds[fold_pos]
    fold_dir = os.path.join(c.workdir, f"fold_{name}")
    result_path = os.path.join(fold_dir, "result.json")
    if os.path.isfile(result_path):
        done = json.loads(open(result_path).read())
        log.info("fold %s: done earlier (acc %.4f), skipped", name, done["acc"])
        return dict(done, resumed_from="done")
    model, abstract_vars, tx, train, pred = _engine(prep)
    variables, fixed = _initial_variables(prep, abstract_vars)
    rep = NamedSharding(prep.mesh, P())
    state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": variables["params"],
                            "batch_stats": variables.get("batch_stats", {}),
                            "opt_state": tx.init(variables["params"])}, rep)
    fixed = jax.device_put(fixed, rep)
    mngr = ckpt_lib.make_manager(os.path.join(fold_dir, "checkpoints"), keep=c.ckpt.keep,
                                 save_every=c.ckpt.every_steps)
    resumed_from = None
    try:
        latest = mngr.latest_step()
        if latest is not None:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
            state = ckpt_lib.restore(mngr, latest, abstract, None)
            resumed_from = int(latest)
            log.info("fold %s: resumed from step %d", name, latest)
        number = prep.fold_number[name]
        key = jax.random.PRNGKey(c.seed + 1000 * (number + 1))
        bsh = shd.batch_sharding(prep.mesh)
        start = int(state["step"])
        t0, sums, n_sum = time.time(), {}, 0
        for step in range(start, c.steps):
            idx = _batch_indices(c.seed, number, step, train_idx, c.batch_size)
            state, m = train(state, fixed, jax.device_put(prep.wav[idx], bsh),
                             jax.device_put(prep.labels[idx].astype(np.int32), bsh), key)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
            n_sum += 1
            done = step + 1
            if step == start:   # the rates leave out the first step (it compiles)
                jax.block_until_ready(state["step"])
                t0, t_start = time.time(), done
            if done % c.log.every_steps == 0 or done == c.steps:
                avg = {k: float(v) / n_sum for k, v in jax.device_get(sums).items()}
                rate = (done - t_start) / (time.time() - t0) if done > t_start else float("nan")
                left = (c.steps - done) / rate + (len(prep.folds) - fold_pos - 1) * c.steps / rate
                log.info("fold %s (%d/%d) step %d/%d | loss %.4f acc %.3f | lr %.2e gnorm %.3g | %.2f steps/s | "
                         "ETA fold %s, all folds %s", name, fold_pos + 1, len(prep.folds), done, c.steps, avg["loss"],
                         avg["acc"], avg["lr"], avg["grad_norm"], rate, fmt_duration((c.steps - done) / rate),
                         fmt_duration(left))
                sums, n_sum = {}, 0
            if ckpt_lib.save(mngr, done, state, None, force=done == c.steps) and on_checkpoint is not None:
                mngr.wait_until_finished()
                on_checkpoint(done)
        scores = _predict_all(prep, pred, state, fixed, test_idx)
    finally:
        ckpt_lib.finish(mngr)
    y = prep.labels[test_idx]
    res = {"fold": name, "acc": float(np.mean(scores.argmax(1) == y)), "n_train": int(len(train_idx)),
           "n_test": int(len(test_idx)), "steps": int(c.steps), "resumed_from": resumed_from}
    os.makedirs(fold_dir, exist_ok=True)
    files.write_text(result_path, json.dumps(res, indent=1))
    log.info("fold %s: test accuracy %.4f on %d clips", name, res["acc"], len(test_idx))
    return res


def _predict_all(prep: Prepared, pred, state, fixed, idx: np.ndarray) -> np.ndarray:
    b = prep.config.eval_batch_size
    bsh = shd.batch_sharding(prep.mesh)
    out = []
    for i in range(0, len(idx), b):
        part = idx[i:i + b]
        x = prep.wav[part]
        if len(part) < b:   # pad the last batch to the compiled size
            x = np.concatenate([x, np.zeros((b - len(part), x.shape[1]), x.dtype)])
        out.append(np.asarray(pred(state, fixed, jax.device_put(x, bsh)))[:len(part)])
    return np.concatenate(out)


def final_params(c, fold: str) -> Any:
    """The params of a fold's newest checkpoint (for inspection and tests)."""
    mngr = ckpt_lib.make_manager(os.path.join(c.workdir, f"fold_{fold}", "checkpoints"), keep=c.ckpt.keep,
                                 save_every=c.ckpt.every_steps)
    try:
        step = mngr.latest_step()
        if step is None:
            return None
        return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["params"]
    finally:
        mngr.close()


def results_entry(prep: Prepared, fold_results: list) -> dict:
    """The task's entry in the eval report format (metrics.acc = mean over folds)."""
    c = prep.config
    accs = [r["acc"] for r in fold_results]
    settings = dict(prep.task.describe(), protocol="fine-tuning (audio tower + linear head)", split=prep.split,
                    head_input=c.head_input, steps_per_fold=c.steps, batch_size=c.batch_size, lr=c.optim.lr,
                    llrd=c.optim.llrd, weight_decay=c.optim.weight_decay, mixup_alpha=c.mixup.alpha,
                    specaug=c.specaug, seed=c.seed)
    return {"metrics": {"acc": float(np.mean(accs)), "acc_std": float(np.std(accs)),
                        "acc_per_fold": {r["fold"]: r["acc"] for r in fold_results}, "n_clips": len(prep.task.clips)},
            "settings": settings}


def zero_shot(prep: Prepared) -> Optional[dict]:
    """The weights zero-shot on the same task (the eval suite's own scoring), or None when it cannot run."""
    from clap_jax.eval.runner import evaluate
    from clap_jax.inference import CLAP

    c = prep.config
    try:
        embedder = CLAP(c.weights)
    except (UserError, OSError, ValueError) as e:   # e.g. a family whose text vocabulary must be supplied
        log.warning("zero-shot skipped: %s", e)
        return None
    embedder.cache_id = None
    loader = LoaderConfig(sample_rate=int(prep.model_config.audio.sample_rate),
                          duration=float(prep.model_config.audio.duration), crop=c.crop, seed=c.seed)
    r = evaluate(embedder, c.data_root, tasks=prep.task.name, config={"options": c.reader_options.to_dict()},
                 loader=loader, progress=False, workers=c.workers, log=log.info)
    r["name"] = "zero-shot"
    r["tasks"] = {k: v for k, v in r["tasks"].items() if k == prep.task.name}
    return r


def run(c, on_checkpoint: Optional[Callable[[int, int], None]] = None) -> dict:
    """Every fold, then the report. Returns {"results": fine-tuning results dict, "folds": [...], "report": paths}."""
    from clap_jax.eval.report import write_report

    prep = prepare(c)
    log.info("%s: %d clips, %d classes, %s; %d steps per fold at batch %d", prep.task.name, len(prep.task.clips),
             len(prep.task.classes), prep.split, c.steps, c.batch_size)
    folds = [run_fold(prep, i, None if on_checkpoint is None else (lambda s, i=i: on_checkpoint(i, s)))
             for i in range(len(prep.folds))]
    loader = LoaderConfig(sample_rate=int(prep.model_config.audio.sample_rate),
                          duration=float(prep.model_config.audio.duration), crop=c.crop, seed=c.seed)
    results = {"checkpoint": c.weights, "name": "fine-tuned", "protocol": "finetune", "data_root": str(c.data_root),
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "loader": dataclasses.asdict(loader), "logit_scale": None,
               "weights": c.weights, "config": json.loads(c.to_json()),
               "tasks": {prep.task.name: results_entry(prep, folds)}, "errors": {}, "missing": [], "pending": {}}
    runs = [results]
    if c.zero_shot:
        zs_path = os.path.join(c.workdir, "zero_shot", "results.json")
        if os.path.isfile(zs_path):
            zs = json.loads(open(zs_path).read())
        else:
            zs = zero_shot(prep)
            if zs is not None:
                os.makedirs(os.path.dirname(zs_path), exist_ok=True)
                files.write_text(zs_path, json.dumps(zs, indent=1, default=str))
        if zs is not None:
            runs = [zs, results]
    paths = write_report(runs, os.path.join(c.workdir, "report"))
    e = results["tasks"][prep.task.name]["metrics"]
    log.info("%s fine-tuned: mean accuracy %.4f (+- %.4f) over %d folds: %s", prep.task.name, e["acc"], e["acc_std"],
             len(folds), ", ".join(f"{k} {v:.4f}" for k, v in e["acc_per_fold"].items()))
    return {"results": results, "folds": folds, "runs": runs, "report": {k: str(v) for k, v in paths.items()}}
