"""msclap's real captioner (`ClapCaptionModel` + `CLAPWrapper._generate_beam`), built offline, as a parity oracle.

The model: msclap's `ClapCaptionModel` over msclap's CLAP (tests/msclap_oracle.py), with `GPT2LMHeadModel
.from_pretrained` replaced by a randomly initialised GPT-2 of the config's size (no hub). Decoding: msclap's own
`_generate_beam`, called on a bare `CLAPWrapper` object that holds only what that method reads (`clapcap`,
`tokenizer`). msclap's CLAPWrapper module imports torchaudio (not installed; never used by decoding), so a stand-in
module is registered for that import only. The tokenizer is the real GPT-2 tokenizer, except that `decode` returns
the token ids themselves, so beams are compared as token sequences.
"""
from __future__ import annotations

import sys
import types

import numpy as np

from msclap_oracle import _import_models, build_msclap


def _mapper():
    _import_models()
    import msclap.models.mapper as mmapper

    return mmapper


def build_clapcap(cfg, seed: int = 0, stop_gain: float = 2.0):
    """msclap `ClapCaptionModel` (eval mode), random weights, sized like our captioner config `cfg`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    mmapper = _mapper()
    t, k = cfg.text, cfg.caption
    clap = build_msclap(cfg, seed)
    gpt_cfg = GPT2Config(vocab_size=t.vocab_size, n_positions=t.n_positions, n_embd=t.n_embd, n_layer=t.n_layer,
                         n_head=t.n_head)
    torch.manual_seed(seed + 7)
    orig = mmapper.GPT2LMHeadModel.from_pretrained
    mmapper.GPT2LMHeadModel.from_pretrained = lambda *a, **kw: GPT2LMHeadModel(gpt_cfg)
    try:
        model = mmapper.ClapCaptionModel(clap, "gpt2", k.prefix_length, k.clip_length, cfg.d_proj, k.num_layers,
                                         k.normalize_prefix, "transformer", True, True)
    finally:
        mmapper.GPT2LMHeadModel.from_pretrained = orig
    g = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():   # non-trivial biases and norms in the mapper and GPT-2
        for name, p in model.named_parameters():
            if name.startswith("clap."):
                continue
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        # a wider spread of logits than GPT-2's init gives, and a stop token that is sometimes chosen, so that
        # beams end at different steps
        wte = model.gpt.transformer.wte.weight
        wte.mul_(4.0)
        wte[k.stop_token].mul_(stop_gain)
    return model.eval()


class _IdsTokenizer:
    """The real GPT-2 tokenizer for `encode`; `decode` gives the ids back as a string 'id id id'."""

    def __init__(self):
        from clap_jax.text.tokenizer import _load_hf_tokenizer

        self._tok = _load_hf_tokenizer(None)

    def encode(self, text):
        return self._tok.encode(text)

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)


def _wrapper_class():
    _import_models()
    if "msclap.CLAPWrapper" not in sys.modules:
        ta = types.ModuleType("torchaudio")
        ta.transforms = types.ModuleType("torchaudio.transforms")
        stand_ins = {"torchaudio": ta, "torchaudio.transforms": ta.transforms}
        saved = {name: sys.modules.get(name) for name in stand_ins}
        sys.modules.update(stand_ins)
        try:
            import msclap.CLAPWrapper  # noqa: F401
        finally:   # the stand-in serves this one import only
            for name, mod in saved.items():
                if mod is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = mod
    return sys.modules["msclap.CLAPWrapper"].CLAPWrapper


def generate_beam(model, prefix_embed: np.ndarray, beam_size: int, entry_length: int = 67,
                  temperature: float = 1.0) -> list[list[int]]:
    """msclap's `_generate_beam` on one clip's prefix (P, E) -> its beams' token lists, best first."""
    import torch

    cls = _wrapper_class()
    w = cls.__new__(cls)
    w.clapcap, w.tokenizer = model, _IdsTokenizer()
    embed = torch.from_numpy(np.asarray(prefix_embed, np.float32))[None]
    texts = w._generate_beam(embed=embed, beam_size=beam_size, entry_length=entry_length, temperature=temperature)
    return [[int(x) for x in s.split()] for s in texts]


def prefix_embeddings(model, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As msclap's generate_caption: (audio embedding (B, d_proj), mapped prefix (B, P, E))."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.asarray(wav, np.float32))
        emb = model.clap(x)[0]
        pre = emb / emb.norm(2, -1).reshape(-1, 1) if model.normalize_prefix else emb
        out = model.clap_project(pre).view(-1, model.prefix_length, model.gpt.transformer.wte.weight.shape[1])
    return emb.numpy(), out.numpy()


def gpt_logits(model, embeds: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.gpt(inputs_embeds=torch.from_numpy(np.asarray(embeds, np.float32))).logits.numpy()
