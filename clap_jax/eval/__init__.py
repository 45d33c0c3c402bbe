"""Zero-shot evaluation harness: the CLAP 2023 26-task suite, `python -m clap_jax.eval`."""


def evaluate(*args, **kwargs):
    """See clap_jax.eval.runner.evaluate (imported lazily so `import clap_jax.eval` stays light)."""
    from clap_jax.eval.runner import evaluate as _evaluate
    return _evaluate(*args, **kwargs)


def summary(results):
    """See clap_jax.eval.runner.summary."""
    from clap_jax.eval.runner import summary as _summary
    return _summary(results)
