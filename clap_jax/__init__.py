"""clap_jax: Contrastive Language-Audio Pretraining (Microsoft CLAP 2023) in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import clap_jax` stays cheap; `from clap_jax import CLAP` loads the model code
    if name == "CLAP":
        from clap_jax.inference import CLAP

        return CLAP
    raise AttributeError(name)
