"""HTSAT-22 on the built-in data, end to end: multi-task generative pretraining of the demo audio encoder, then the
demo CLAP initialised from it against the same CLAP from scratch.

    python -m clap_jax.train.htsat22_demo --out runs/htsat22_demo          # ~30 min on 2 CPU cores
    python -m clap_jax.train.htsat22_demo --out /tmp/q --quick             # smoke run, a few minutes
    python -m clap_jax.train.htsat22_demo --out runs/h22_s1 --seed 1       # another seed (same data)
    python -m clap_jax.train.htsat22_demo --combine runs/htsat22_demo runs/h22_s1    # the runs side by side

Stages (each is kept when finished; kill the script and rerun it to resume, a training run resumes from its
newest checkpoint):

1. the built-in dataset (clap_jax.data.synthetic: 8 sounds x pitch x loudness x rhythm, captions; 2.5 s at
   16 kHz) and its task records (clap_jax.data.multitask.BUILTIN_TASKS: the four attributes as classification
   prompts with the label as answer, and captioning), preprocessed into <out>/data/tasks/<task>;
2. multi-task pretraining, configs/htsat22.py:demo (the demo CLAP's audio encoder + the demo captioner's mapper
   and GPT-2, every part trained), scored on the held-out clips before and after: answer loss per task, and the
   accuracy of answering each classification prompt (the most likely candidate label) against chance;
3. the demo CLAP (configs/demo.py) twice with the same seed and steps: from scratch, and with its audio encoder
   from stage 2 (config.init.audio_encoder); zero-shot on the held-out clips every --eval-every steps;
4. <out>/report.md (tables) and <out>/report.png (curves and bars).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from clap_jax.errors import UserError, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ZS_TASKS = ("sound", "pitch", "loudness", "rhythm")


def _banner(msg: str, t0: float) -> None:
    print(f"\n==== [{time.strftime('%H:%M:%S')} +{time.time() - t0:.0f}s] {msg} ====", flush=True)


def _config(name: str, arg: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", os.path.join(REPO, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _train(config_arg: str, workdir: str, steps: int, log_path: str, extra: list[str]) -> float:
    """python -m clap_jax.train in a child process (8 simulated CPU devices), its progress lines shown; a finished
    run (checkpoint at `steps`) is not rerun. Returns the seconds it took (0 if already done)."""
    if os.path.isdir(os.path.join(workdir, "checkpoints", str(steps))):
        print(f"already trained to step {steps}: {workdir}")
        return 0.0
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip())
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "clap_jax.train", "--config", config_arg, "--workdir", workdir] + extra
    print(" ".join(cmd), flush=True)
    t = time.time()
    with open(log_path, "a") as log:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        for line in p.stdout:
            log.write(line)
            log.flush()
            if " step " in line or "eval step" in line or "error" in line.lower() or "resumed" in line:
                print("  " + line.rstrip()[:200], flush=True)
        if p.wait() != 0:
            raise UserError(f"training failed (exit {p.returncode}): see {log_path}")
    if not os.path.isdir(os.path.join(workdir, "checkpoints", str(steps))):
        raise UserError(f"{workdir}: training did not reach step {steps}; see {log_path}")
    return time.time() - t


def _check_settings(out: str, settings: dict) -> None:
    """The finished stages in `out` are reused on a rerun: refuse to mix them with other settings."""
    path = os.path.join(out, "settings.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise UserError(f"{out} holds a run with other settings (" + "; ".join(
                f"{k}: {o!r} there, {n!r} now" for k, (o, n) in diff.items()) + "): its finished stages would be "
                "reused; use another --out or the same settings")
    else:
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)


def _apply_sets(config, sets: list[str]):
    """`FIELD=VALUE` strings onto `config` (values read as Python literals, else as strings), as the training run
    gets them as --config.FIELD=VALUE flags."""
    import ast

    from clap_jax.train import config as config_lib

    for item in sets:
        field, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"{item!r}: expected FIELD=VALUE")
        parent = config
        for part in field.split(".")[:-1]:
            if part not in parent:
                raise UserError(f"{field}: {config_lib.unknown_field_message(field)}")
            parent = parent[part]
        leaf = field.split(".")[-1]
        if leaf not in parent:
            raise UserError(f"{field}: {config_lib.unknown_field_message(field)}")
        try:
            v = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            v = value
        parent[leaf] = v
    return config


def _score(out_json: str, variables_fn, config, waves, clips, label: str) -> dict:
    from clap_jax.data import multitask
    from clap_jax.eval import multitask as mt_eval
    from clap_jax.train import state as state_lib

    if os.path.isfile(out_json):
        with open(out_json) as f:
            return json.load(f)
    t = time.time()
    tasks = [multitask.Task.from_config(dict(d)) for d in config.data.tasks]
    res = mt_eval.evaluate(state_lib.make_model(config), variables_fn(), config.model, waves, clips, tasks)
    print(f"{label}: scored {len(clips)} held-out clips x {len(tasks)} tasks in {time.time() - t:.0f}s", flush=True)
    with open(out_json, "w") as f:
        json.dump(res, f, indent=1)
    return res


def _curves(workdir: str) -> dict:
    from clap_jax.eval import demo_report

    return {k: sorted(v.items()) for k, v in demo_report.read_event_scalars(workdir).items()}


def _zs(curves: dict, task: str) -> list[tuple[int, float]]:
    return curves.get(f"eval/builtin_{task}/acc", [])


def mean_curve(zs: dict, eval_steps: list[int]) -> list[float | None]:
    """The mean zero-shot accuracy of the four tasks at each eval step (None where one is missing)."""
    out = []
    for x in eval_steps:
        v = [zs.get(t, {}).get(str(x)) for t in ZS_TASKS]
        out.append(None if any(a is None for a in v) else sum(v) / len(v))
    return out


def curve(zs: dict, task: str, eval_steps: list[int]) -> list[float | None]:
    """One run's zero-shot accuracy of `task` (or 'mean': of the four) at each eval step (None where missing)."""
    if task == "mean":
        return mean_curve(zs, eval_steps)
    return [zs.get(task, {}).get(str(x)) for x in eval_steps]


def steps_to_match(zs: dict, eval_steps: list[int]) -> str:
    """One line: the first eval step at which the run from HTSAT-22 reaches the scratch run's final accuracy,
    per task and for the mean of the four."""
    def first(curve_h, target):
        return next((x for x, v in zip(eval_steps, curve_h) if v is not None and v >= target), None)

    parts = []
    for t in ZS_TASKS + ("mean",):
        sc, h = curve(zs["scratch"], t, eval_steps), curve(zs["htsat22"], t, eval_steps)
        if sc[-1] is None:
            continue
        x = first(h, sc[-1])
        parts.append(f"{t} {100 * sc[-1]:.1f} %: " + (f"step {x}" if x else "not reached"))
    return (f"Scratch's accuracy at step {eval_steps[-1]} reached from HTSAT-22 at: " + "; ".join(parts) + ".")


def combine(dirs: list[str]) -> str:
    """Markdown comparing finished runs of this script (their summary.json), e.g. the same settings over seeds:
    per run the answers' accuracy after pretraining and the mean zero-shot curve of both CLAP runs; across runs the
    average of each task at every eval step, scratch vs from HTSAT-22."""
    runs = []
    for d in dirs:
        path = os.path.join(d, "summary.json")
        if not os.path.isfile(path):
            raise UserError(f"{path}: not found (run python -m clap_jax.train.htsat22_demo --out {d} first)")
        with open(path) as f:
            runs.append((d, json.load(f)))
    steps = runs[0][1]["eval_steps"]
    if any(r["eval_steps"] != steps for _, r in runs):
        raise UserError("the runs were evaluated at different steps: " + "; ".join(
            f"{d}: {r['eval_steps']}" for d, r in runs))
    cls = [t for t in runs[0][1]["after"] if "acc" in runs[0][1]["after"][t]]
    lines = [f"# HTSAT-22 on the built-in data: {len(runs)} runs", "",
             "| run | settings | " + " | ".join(f"answers {t}" for t in cls) + " | " + " | ".join(
                 f"mean scratch @{x}" for x in steps) + " | " + " | ".join(f"mean HTSAT-22 @{x}" for x in steps)
             + " |", "|---|---|" + "---|" * (len(cls) + 2 * len(steps))]
    for d, r in runs:
        m = [v for n in ("scratch", "htsat22") for v in mean_curve(r["zs"][n], steps)]
        sets = [f"seed={r.get('seed', 0)}", f"batch={r['pretrain_batch']}", f"steps={r['pretrain_steps']}"]
        sets += r.get("pretrain_set", []) + [f"CLAP {x}" for x in r.get("clap_set", [])]
        lines.append(f"| {os.path.basename(os.path.normpath(d))} | {' '.join(sets)} | " + " | ".join(
            f"{100 * r['after'][t]['acc']:.1f} %" for t in cls) + " | " + " | ".join(
            "-" if v is None else f"{100 * v:.1f} %" for v in m) + " |")
    lines += ["", f"Average over the {len(runs)} runs, zero-shot accuracy at steps {', '.join(map(str, steps))}:", "",
              "| task | scratch | from HTSAT-22 |", "|---|---|---|"]
    for t in ZS_TASKS + ("mean",):
        cols = []
        for n in ("scratch", "htsat22"):
            curves = [curve(r["zs"][n], t, steps) for _, r in runs]
            avg = [None if any(c[i] is None for c in curves) else sum(c[i] for c in curves) / len(curves)
                   for i in range(len(steps))]
            cols.append(" / ".join("-" if v is None else f"{100 * v:.1f}" for v in avg) + " %")
        lines.append(f"| {'mean of the four' if t == 'mean' else t} | {cols[0]} | {cols[1]} |")
    lines += [""] + [f"- {os.path.basename(os.path.normpath(d))}: " + steps_to_match(r["zs"], steps)
                     for d, r in runs] + [""]
    return "\n".join(lines)


def report(out: str, s: dict) -> str:
    """Markdown of the results summary `s` (what main() collects)."""
    b, a = s["before"], s["after"]
    lines = [f"# HTSAT-22 on the built-in data ({s['machine']})", "",
             f"Multi-task pretraining, configs/htsat22.py:demo, {s['pretrain_steps']} steps at batch "
             f"{s['pretrain_batch']} ({s['pretrain_s']:.0f} s); held-out clips: {s['n_heldout']}; seed "
             f"{s.get('seed', 0)}" + "".join(f"; {x}" for x in s.get("pretrain_set", [])) + ".", "",
             "| task | answer loss before | after | accuracy before | after | chance |", "|---|---|---|---|---|---|"]
    for t in b:
        acc = (f"{100 * b[t]['acc']:.1f} % | **{100 * a[t]['acc']:.1f} %** | {100 * a[t]['chance']:.1f} %"
               if "acc" in a[t] else "- | - | -")
        lines.append(f"| {t} | {b[t]['answer_loss']:.3f} | **{a[t]['answer_loss']:.3f}** | {acc} |")
    lines += ["", f"Demo CLAP (configs/demo.py), {s['clap_steps']} steps each, same seed"
              + "".join(f"; {x} (from HTSAT-22)" for x in s.get("clap_set", [])) + "; zero-shot accuracy on "
              f"the held-out clips at each eval (steps {', '.join(str(x) for x in s['eval_steps'])}):", "",
              "| task | " + " | ".join(f"scratch @{x}" for x in s["eval_steps"]) + " | "
              + " | ".join(f"HTSAT-22 init @{x}" for x in s["eval_steps"]) + " |",
              "|---|" + "---|" * (2 * len(s["eval_steps"]))]
    for t in ZS_TASKS:
        row = curve(s["zs"]["scratch"], t, s["eval_steps"]) + curve(s["zs"]["htsat22"], t, s["eval_steps"])
        lines.append(f"| {t} | " + " | ".join("-" if v is None else f"{100 * v:.1f} %" for v in row) + " |")
    means = {n: mean_curve(s["zs"][n], s["eval_steps"]) for n in ("scratch", "htsat22")}
    lines.append("| **mean of the four** | " + " | ".join("-" if v is None else f"**{100 * v:.1f} %**" for n in
                                                          ("scratch", "htsat22") for v in means[n]) + " |")
    lines += ["", steps_to_match(s["zs"], s["eval_steps"])]
    lines += ["", "Final in-batch accuracy audio->text (mean of the last 3 logs): "
              + ", ".join(f"{k} {100 * v:.1f} %" for k, v in s["final_acc"].items() if v is not None),
              "", f"Training time: scratch {s['clap_s']['scratch']:.0f} s, HTSAT-22 init "
              f"{s['clap_s']['htsat22']:.0f} s; whole script {s['total_s']:.0f} s.", "", "![plot](report.png)", ""]
    return "\n".join(lines)


def plot(out: str, s: dict, curves: dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(20, 4.6))
    pre = curves["pretrain"].get("train/loss", [])
    if pre:
        ax[0].plot(*zip(*pre), color="tab:blue", label="train answer loss")
    for t, r in s["after"].items():
        ax[0].scatter([s["pretrain_steps"]], [r["answer_loss"]], s=18, label=f"held-out {t}")
        ax[0].scatter([0], [s["before"][t]["answer_loss"]], s=18, color="gray")
    ax[0].set(title="HTSAT-22 pretraining: answer loss", xlabel="step", ylabel="cross-entropy / token")
    ax[0].legend(fontsize=7)
    ax[0].grid(alpha=0.3)
    cls = [t for t in s["after"] if "acc" in s["after"][t]]
    x = range(len(cls))
    ax[1].bar([i - 0.2 for i in x], [s["before"][t]["acc"] for t in cls], 0.4, color="lightgray", label="before")
    ax[1].bar([i + 0.2 for i in x], [s["after"][t]["acc"] for t in cls], 0.4, color="tab:blue", label="after")
    ax[1].scatter(list(x), [s["after"][t]["chance"] for t in cls], marker="_", s=400, color="black", label="chance")
    ax[1].set_xticks(list(x), cls)
    ax[1].set(title="Answering the prompts (held-out clips)", ylabel="accuracy", ylim=(0, 1.05))
    ax[1].legend(fontsize=8)
    tw = ax[2].twinx()
    for name, color in (("scratch", "tab:gray"), ("htsat22", "tab:red")):
        c = curves[name]
        lab = "from scratch" if name == "scratch" else "audio encoder from HTSAT-22"
        if c.get("train/loss"):
            ax[2].plot(*zip(*c["train/loss"]), color=color, label=f"loss, {lab}")
        if c.get("train/acc_a2t"):
            tw.plot(*zip(*c["train/acc_a2t"]), color=color, ls=":")
        for t, mk in zip(ZS_TASKS, "osv^"):
            pts = _zs(c, t)
            if pts:
                ax[3].plot(*zip(*pts), color=color, marker=mk, label=f"{t}, {lab}")
    tw.set(ylim=(0, 1), ylabel="in-batch accuracy audio->text (dotted)")
    ax[2].set(title="Demo CLAP: contrastive loss (solid)", xlabel="step", ylabel="loss")
    ax[2].legend(fontsize=7, loc="upper right")
    ax[3].set(title="Demo CLAP: held-out zero-shot accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1.05))
    ax[3].legend(fontsize=6, ncol=2)
    ax[3].grid(alpha=0.3)
    fig.suptitle(f"HTSAT-22 on the built-in data — {s['machine']}", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "report.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clap_jax.train.htsat22_demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default="runs/htsat22_demo")
    ap.add_argument("--num-train", type=int, default=3000)
    ap.add_argument("--num-eval", type=int, default=400)
    ap.add_argument("--pretrain-steps", type=int, default=800)
    ap.add_argument("--pretrain-batch", type=int, default=0, help="pretraining batch size (default: the config's, 32)")
    ap.add_argument("--clap-steps", type=int, default=240)
    ap.add_argument("--eval-every", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0, help="config.seed and config.data.seed of every training run")
    ap.add_argument("--pretrain-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a field of the pretraining config, e.g. optim.lr=1e-3 (repeatable)")
    ap.add_argument("--clap-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a field of the CLAP run from HTSAT-22 only, e.g. optim.towers.audio_encoder.lr_mult=0.3")
    ap.add_argument("--quick", action="store_true", help="400 clips, 40 + 30 steps: checks the script runs")
    ap.add_argument("--combine", nargs="+", metavar="OUT",
                    help="only compare finished runs (their --out dirs, e.g. one per --seed): prints markdown")
    a = ap.parse_args(argv)
    if a.combine:
        print(combine(a.combine))
        return 0
    if a.quick:
        a.num_train, a.num_eval, a.pretrain_steps, a.clap_steps, a.eval_every = 400, 80, 40, 30, 15
    if a.clap_steps % a.eval_every:
        raise UserError(f"--clap-steps {a.clap_steps} must be a multiple of --eval-every {a.eval_every}")
    # a bad field is an error now, not after the pretraining
    _apply_sets(_config("htsat22", "demo"), a.pretrain_set)
    _apply_sets(_config("demo", ""), a.clap_set)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")     # a CPU demo: the scoring here and the training runs
    t0 = time.time()
    out = os.path.abspath(a.out)
    data = os.path.join(out, "data")
    os.makedirs(out, exist_ok=True)
    _check_settings(out, {k: getattr(a, k) for k in ("num_train", "num_eval", "pretrain_steps", "pretrain_batch",
                                                     "clap_steps", "eval_every", "seed", "pretrain_set", "clap_set")})

    from clap_jax.data import multitask, synthetic

    machine = f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start"
    _banner(f"1/4 built-in dataset ({a.num_train} train / {a.num_eval} held-out clips) and task records -> {data}", t0)
    stamp = f"num_train={a.num_train} num_eval={a.num_eval} seed=0 seconds=2.5 sr=16000"
    stamp_path = os.path.join(data, ".complete")
    if not (os.path.isfile(stamp_path) and open(stamp_path).read().strip() == stamp):
        synthetic.write(data, a.num_train, a.num_eval, seed=0, seconds=2.5, sample_rate=16000, workers=os.cpu_count()
                        or 1, progress=False)
        with open(stamp_path, "w") as f:
            f.write(stamp)
    dirs = multitask.build_builtin_tasks(data, workers=os.cpu_count() or 1)
    print("task records:", ", ".join(f"{k} -> {os.path.relpath(v, out)}" for k, v in dirs.items()), flush=True)

    _banner(f"2/4 HTSAT-22 multi-task pretraining, {a.pretrain_steps} steps", t0)
    import jax

    from clap_jax.convert.workdir import load_workdir
    from clap_jax.eval import multitask as mt_eval
    from clap_jax.train import state as state_lib

    pre_arg = f"{os.path.join(REPO, 'configs', 'htsat22.py')}:demo,data={data},steps={a.pretrain_steps}"
    if a.pretrain_batch:
        pre_arg += f",batch={a.pretrain_batch}"
    pre_sets = [f"seed={a.seed}", f"data.seed={a.seed}"] + a.pretrain_set
    pre_cfg = _apply_sets(_config("htsat22", pre_arg.split(":", 1)[1]), pre_sets)
    pre_dir = os.path.join(out, "htsat22")
    waves, clips = mt_eval.heldout_clips(data, pre_cfg.model)
    before = _score(os.path.join(out, "htsat22_before.json"), lambda: state_lib.initial_variables(pre_cfg), pre_cfg,
                    waves, clips, "before")
    pre_s = _train(pre_arg, pre_dir, a.pretrain_steps, os.path.join(out, "htsat22.log"),
                   [f"--config.{x}" for x in pre_sets])
    after = _score(os.path.join(out, "htsat22_after.json"), lambda: load_workdir(pre_dir)[0], pre_cfg, waves, clips,
                   "after")
    for t in before:
        acc = (f"; accuracy {100 * before[t]['acc']:.1f} -> {100 * after[t]['acc']:.1f} % "
               f"(chance {100 * after[t]['chance']:.1f} %)" if "acc" in after[t] else "")
        print(f"  {t:<11} held-out answer loss {before[t]['answer_loss']:.3f} -> {after[t]['answer_loss']:.3f}{acc}")
    jax.clear_caches()

    _banner(f"3/4 demo CLAP, {a.clap_steps} steps: from scratch vs audio encoder from HTSAT-22", t0)
    clap_arg = f"{os.path.join(REPO, 'configs', 'demo.py')}:dirs={data}/tfrecords,steps={a.clap_steps}"
    common = [f"--config.eval.data_root={data}", f"--config.eval.every_steps={a.eval_every}",
              f"--config.seed={a.seed}", f"--config.data.seed={a.seed}"]
    clap_s = {}
    for name, extra in (("scratch", []), ("htsat22", [f"--config.init.audio_encoder={pre_dir}"]
                                          + [f"--config.{x}" for x in a.clap_set])):
        print(f"-- {name}", flush=True)
        wd = os.path.join(out, f"clap_{name}")
        took = _train(clap_arg, wd, a.clap_steps, os.path.join(out, f"clap_{name}.log"), common + extra)
        done = os.path.join(wd, "train_seconds.json")
        if took:
            with open(done, "w") as f:
                json.dump(took, f)
        clap_s[name] = json.load(open(done)) if os.path.isfile(done) else 0.0

    _banner("4/4 report", t0)
    curves = {"pretrain": _curves(pre_dir), "scratch": _curves(os.path.join(out, "clap_scratch")),
              "htsat22": _curves(os.path.join(out, "clap_htsat22"))}
    eval_steps = list(range(a.eval_every, a.clap_steps + 1, a.eval_every))
    zs = {n: {t: {str(st): v for st, v in _zs(curves[n], t)} for t in ZS_TASKS} for n in ("scratch", "htsat22")}

    def last3(n):
        pts = curves[n].get("train/acc_a2t", [])
        return sum(v for _, v in pts[-3:]) / len(pts[-3:]) if pts else None

    pre_json = os.path.join(out, "htsat22_seconds.json")
    if pre_s:
        json.dump(pre_s, open(pre_json, "w"))
    s = {"machine": machine, "seed": a.seed, "pretrain_set": a.pretrain_set, "clap_set": a.clap_set,
         "pretrain_steps": a.pretrain_steps, "pretrain_batch": pre_cfg.batch_size,
         "pretrain_s": json.load(open(pre_json)) if os.path.isfile(pre_json) else 0.0, "n_heldout": len(clips),
         "before": before, "after": after, "clap_steps": a.clap_steps, "eval_steps": eval_steps, "zs": zs,
         "final_acc": {n: last3(n) for n in ("scratch", "htsat22")}, "clap_s": clap_s, "total_s": time.time() - t0}
    print(f"\n{'task':<10}" + "".join(f"{'scratch@' + str(x):>14}" for x in eval_steps)
          + "".join(f"{'htsat22@' + str(x):>14}" for x in eval_steps))
    for t in ZS_TASKS:
        vals = [zs[n][t].get(str(x)) for n in ("scratch", "htsat22") for x in eval_steps]
        print(f"{t:<10}" + "".join(f"{'-' if v is None else f'{100 * v:.1f} %':>14}" for v in vals))
    vals = [v for n in ("scratch", "htsat22") for v in mean_curve(zs[n], eval_steps)]
    print(f"{'mean':<10}" + "".join(f"{'-' if v is None else f'{100 * v:.1f} %':>14}" for v in vals))
    print(steps_to_match(zs, eval_steps))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(s, f, indent=1)
    png = plot(out, s, curves)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report(out, s))
    print(f"\nreport: {os.path.join(out, 'report.md')}\nplot:   {png}\ntotal {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
