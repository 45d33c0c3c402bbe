"""Periodic zero-shot eval inside training: an eval function for the trainer's `eval_fn(variables, step)`.

    from clap_jax.eval.hook import make_eval_fn
    eval_fn = make_eval_fn("/tmp/synth", model_config, tasks="builtin")
    train_and_evaluate(config, workdir, eval_fn=eval_fn)      # logs eval/builtin_sound/acc, ...

Embeddings change every step, so nothing is cached on disk; the numbers are `clap_jax.eval.summary` of the results.
"""
from __future__ import annotations

from typing import Callable, Optional

from clap_jax.eval.clips import LoaderConfig
from clap_jax.eval.runner import evaluate, summary


def make_eval_fn(data_root: str, model_config=None, tasks: str = "builtin", batch_size: int = 32, workers: int = 4,
                 loader: Optional[LoaderConfig] = None, log: Optional[Callable] = None,
                 model_factory: Optional[Callable] = None, mesh=None) -> Callable:
    """fn(variables, step) -> {"<task>/<metric>": value}.

    By default one `clap_jax.inference.CLAP` is built at the first call, on `mesh` (the training mesh: batches split
    over all its axes, the params in their training shardings, every host sees the same numbers), and later calls
    swap the new weights in, so both towers compile once per run. `model_factory(variables) -> Embedder` replaces
    that (a new embedder per call). The clip loader defaults to the model's own clip length and sample rate."""
    if loader is None:
        a = getattr(model_config, "audio", None)
        loader = (LoaderConfig(sample_rate=int(a.sample_rate), duration=float(a.duration)) if a is not None
                  else LoaderConfig())
    cached = []

    def embedder_for(variables):
        if model_factory is not None:
            return model_factory(variables)
        if not cached:
            from clap_jax.inference import CLAP

            cached.append(CLAP(config=model_config, variables=variables, batch_size=batch_size, mesh=mesh))
        else:
            cached[0].set_variables(variables)
        return cached[0]

    def eval_fn(variables, step):
        res = evaluate(embedder_for(variables), data_root, tasks=tasks, cache_dir=None, loader=loader,
                       batch_size=batch_size, workers=workers, progress=False, log=log or (lambda *_: None))
        if res["errors"] and log:
            log(f"[eval] step {step}: {len(res['errors'])} task(s) failed: {list(res['errors'])}")
        return summary(res)

    eval_fn.embedder = lambda: cached[0] if cached else None
    eval_fn.loader = loader
    return eval_fn
