"""Weights in and out, for every format, without the trainer: clap_jax checkpoint directories, training workdirs,
msclap `.pth`/`.safetensors` (both directions), HF GPT-2 into the text tower. CLI: `python -m clap_jax.convert`.

    from clap_jax.convert import load_weights, save_checkpoint
    variables, config = load_weights("CLAP_weights_2023.pth")     # or a checkpoint dir, or a training workdir
"""
from clap_jax.convert.checkpoint import load_checkpoint, save_checkpoint
from clap_jax.convert.formats import load_weights
from clap_jax.convert.tree import CheckpointError

__all__ = ["CheckpointError", "load_checkpoint", "load_weights", "save_checkpoint"]
