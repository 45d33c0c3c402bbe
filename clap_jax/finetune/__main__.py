"""python -m clap_jax.finetune --weights W --task esc50 --data-root D [--workdir DIR] [--config cfg.py] [--set k=v]

Fine-tunes the audio tower of W (any registered model family with encode_audio) plus a linear head on a
single-label task of the eval suite, once per fold (the dataset's folds, e.g. ESC-50's 5, else a seeded k-fold
split), and writes each fold's accuracy, their mean, and the same weights zero-shot side by side in the eval report
format (DIR/report/{results.json,report.md,report.png}). Rerunning with the same --workdir resumes: finished folds
are skipped and a fold stopped midway continues from its newest checkpoint, bit for bit.

  --config FILE   Python file whose get_config() returns clap_jax.finetune.config.defaults() changed
  --set F=V       one field, e.g. --set optim.llrd=0.65 --set mixup.alpha=0.4 --set specaug=true --set steps=2000
Exit status 2 with one `error:` line for bad arguments, weights or data.
"""
from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports below: the re-exec would otherwise pay for them twice
    from clap_jax import hostmem

    hostmem.reexec_with_hugepages()

import argparse
import sys

from clap_jax.errors import run_cli


def parser():
    ap = argparse.ArgumentParser(prog="python -m clap_jax.finetune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="Python config file (get_config())")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--task", default=None, help="task name from the eval suite, e.g. esc50")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from clap_jax.finetune import config as config_lib
    from clap_jax.finetune.run import run
    from clap_jax.train.progress import setup_logging

    c = config_lib.load_file(args.config) if args.config else config_lib.defaults()
    for field in ("weights", "task", "data_root", "workdir"):
        if getattr(args, field) is not None:
            c[field] = getattr(args, field)
    for item in args.set:
        config_lib.set_field(c, item)
    config_lib.validate(c)
    setup_logging()
    import logging
    logging.getLogger("clap_jax.finetune").setLevel(logging.INFO)
    out = run(c)
    m = out["results"]["tasks"][c.task if c.task in out["results"]["tasks"] else next(iter(out["results"]["tasks"]))]
    print(f"[finetune] {c.task}: mean accuracy {m['metrics']['acc']:.4f} over {len(out['folds'])} folds "
          f"({', '.join(f'{k}: {v:.4f}' for k, v in m['metrics']['acc_per_fold'].items())})")
    print("\n".join(f"[finetune] wrote {k}: {v}" for k, v in out["report"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
