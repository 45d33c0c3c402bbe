"""Text side: GPT-2 BPE tokenization with msclap's rules."""
from clap_jax.text.tokenizer import ClapTokenizer

__all__ = ["ClapTokenizer"]
