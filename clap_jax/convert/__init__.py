"""Weight conversion: msclap <-> clap_jax, HF GPT-2 -> text tower. CLI: `python -m clap_jax.convert --help`."""
from clap_jax.convert.hf_gpt2 import load_hf_gpt2
from clap_jax.convert.msclap import (CheckpointError, from_msclap_state_dict, load_msclap_checkpoint, save_msclap,
                                     to_msclap_state_dict)

__all__ = ["CheckpointError", "from_msclap_state_dict", "load_hf_gpt2", "load_msclap_checkpoint", "save_msclap",
           "to_msclap_state_dict"]
