"""Keyword-to-caption augmentation (LAION-CLAP): captions for rows that come with labels only (AudioSet-style
keywords), made by a pluggable generator.

  'template' (default, offline): the labels joined into each of `--label-template` (clap_jax.data.preprocess
             makes these while reading the manifests);
  a directory: a local Hugging Face seq2seq model (T5, as LAION-CLAP used, or any AutoModelForSeq2SeqLM with its
             tokenizer saved beside it), run in batches on the joined keywords with greedy decoding, so the same
             model and labels always give the same caption. Nothing is downloaded.

A generated caption takes the place of the template captions of its row (a row whose generation comes out empty
keeps its template captions); the labels stay in the record beside it, and dataset.json names the generator in
its settings (`caption_generator`).
"""
from __future__ import annotations

import os
from typing import Sequence

from clap_jax.errors import UserError

TEMPLATE = "template"


class Seq2SeqCaptioner:
    """keywords -> caption with a local HF seq2seq model directory (tokenizer files beside the weights).

    >>> cap = Seq2SeqCaptioner("t5_keyword_to_caption/")
    >>> cap([["dog", "bark"], ["rain"]])   # -> two captions
    """

    def __init__(self, model_dir: str, batch_size: int = 32, max_new_tokens: int = 40, joiner: str = ", "):
        if not os.path.isdir(model_dir):
            raise UserError(f"--caption-generator {model_dir}: not 'template' and not a directory holding a local "
                            f"Hugging Face seq2seq model (config.json, weights and tokenizer files)")
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise UserError(f"{model_dir}: no config.json: not a saved Hugging Face model directory")
        try:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True).eval()
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{model_dir}: cannot load a seq2seq model and its tokenizer from this directory "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        self._torch = torch
        self.name = os.path.abspath(model_dir)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.joiner = joiner

    def __call__(self, label_lists: Sequence[Sequence[str]]) -> list[str]:
        prompts = [self.joiner.join(labels) for labels in label_lists]
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            enc = self.tokenizer(prompts[i:i + self.batch_size], return_tensors="pt", padding=True)
            with self._torch.no_grad():
                ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
            out += [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out


def make_generator(spec: str, joiner: str = ", "):
    """'template' -> None (preprocess's own templates); a directory -> Seq2SeqCaptioner."""
    if spec == TEMPLATE:
        return None
    return Seq2SeqCaptioner(spec, joiner=joiner)


def caption_rows(rows: list, templates: Sequence[str], joiner: str, label_captions: str, generator) -> int:
    """Replace the template captions of labelled rows (the rows `label_captions` gives label captions: 'if-missing'
    label-only rows, 'always' every labelled row) with the generator's caption, in place; returns how many rows
    got one. Rows are processed in order, in the generator's batches."""
    if generator is None or label_captions == "never":
        return 0
    todo = []
    for r in rows:
        if not r.labels:
            continue
        made = [t.format(labels=joiner.join(r.labels)) for t in templates]
        if r.captions[-len(made):] == made and (label_captions == "always" or len(r.captions) == len(made)):
            todo.append((r, len(made)))
    captions = generator([r.labels for r, _ in todo])
    done = 0
    for (r, n), cap in zip(todo, captions):
        if cap:
            r.captions = r.captions[:-n] + [cap]
            done += 1
    return done
