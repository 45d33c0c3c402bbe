"""msclap's real PyTorch model, built offline, as the parity oracle for tests and benchmarks.

msclap 1.3.4 is installed with --no-deps (its pins break jax). Its package __init__ imports torchaudio, which is
not installed, so the package is registered without running __init__ and only `msclap.models` is imported. The
text tower normally comes from the hub (`AutoModel.from_pretrained('gpt2')`); here it is a randomly initialised
`GPT2Model` of the requested size.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np


def _import_models():
    if "msclap.models.clap" not in sys.modules:
        spec = importlib.util.find_spec("msclap")
        if spec is None:
            raise ImportError("msclap is not installed: pip install --no-deps msclap==1.3.4 torchlibrosa==0.1.0")
        if "msclap" not in sys.modules or not hasattr(sys.modules["msclap"], "__path__"):
            pkg = types.ModuleType("msclap")
            pkg.__path__ = list(spec.submodule_search_locations)
            sys.modules["msclap"] = pkg
    import msclap.models.clap as mclap
    import msclap.models.htsat as mhtsat
    from msclap.models import config as mconfig

    return mclap, mhtsat, mconfig


def build_msclap(cfg, seed: int = 0):
    """msclap `CLAP` (eval mode) with random weights, sized like our model config `cfg`."""
    import torch
    from transformers import GPT2Config, GPT2Model

    mclap, mhtsat, mconfig = _import_models()
    t = cfg.text
    gpt_cfg = GPT2Config(vocab_size=t.vocab_size, n_positions=t.n_positions, n_embd=t.n_embd, n_layer=t.n_layer,
                         n_head=t.n_head)
    torch.manual_seed(seed)
    orig = mclap.AutoModel.from_pretrained
    mclap.AutoModel.from_pretrained = lambda *a, **k: GPT2Model(gpt_cfg)
    try:
        a = cfg.audio
        latent = a.embed_dim * 2 ** (len(a.depths) - 1)
        model = mclap.CLAP("HTSAT", 44100, 1024, 320, 64, 50, 8000, a.num_classes, latent, "gpt2", t.n_embd,
                           cfg.d_proj)
    finally:
        mclap.AutoModel.from_pretrained = orig
    if (a.embed_dim, tuple(a.depths), tuple(a.num_heads), a.num_classes) != (96, (2, 2, 6, 2), (4, 8, 16, 32), 527):
        model.audio_encoder.base.htsat = mhtsat.HTSAT_Swin_Transformer(
            embed_dim=a.embed_dim, depths=list(a.depths), num_heads=list(a.num_heads), num_classes=a.num_classes,
            config=mconfig)
    # Random non-trivial values for everything the default init leaves at 0/1 (biases, norms, bn0 stats, logit
    # scale), so that a mapping error anywhere shows up in the outputs.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name or "bn0" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            if "relative_position_bias_table" in name:
                p.normal_(0.0, 0.5, generator=g)
        bn = model.audio_encoder.base.htsat.bn0
        bn.running_mean.copy_(-30 + 5 * torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(50 + 20 * torch.rand(bn.running_var.shape, generator=g))
        model.logit_scale.fill_(3.1)
    return model.eval()


def msclap_text_inputs(texts, max_length: int = 77):
    """msclap's preprocess_text with the offline tokenizer: text + ' <|endoftext|>', pad '!' to 77, no truncation."""
    import torch

    from clap_jax.text.tokenizer import _load_hf_tokenizer

    tok = _load_hf_tokenizer(None)
    rows = [tok(t + " <|endoftext|>", add_special_tokens=True, max_length=max_length, padding="max_length")
            for t in texts]
    return {"input_ids": torch.tensor([r["input_ids"] for r in rows]),
            "attention_mask": torch.tensor([r["attention_mask"] for r in rows])}


def msclap_audio_outputs(model, wav: np.ndarray) -> dict:
    """Run the HTSAT + projection of `model` on (B, N) float32 audio; returns numpy intermediates too."""
    import torch

    htsat = model.audio_encoder.base.htsat
    x = torch.from_numpy(np.asarray(wav, np.float32))
    with torch.no_grad():
        spec = htsat.logmel_extractor(htsat.spectrogram_extractor(x))              # (B, 1, T, 64)
        bn = htsat.bn0(spec.transpose(1, 3)).transpose(1, 3)
        img = htsat.reshape_wav2img(bn) if bn.shape[2] <= 1024 else None
        out = htsat(x)
        emb = model.audio_encoder.projection(out["latent_output"])
    res = {"logmel": spec[:, 0].numpy(), "bn": bn[:, 0].numpy(), "latent": out["latent_output"].numpy(),
           "clipwise": out["clipwise_output"].numpy(), "framewise": out["framewise_output"].numpy(),
           "embedding": emb.numpy()}
    if img is not None:
        res["image"] = img[:, 0].numpy()
    return res


def msclap_text_embeddings(model, texts) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.caption_encoder(msclap_text_inputs(texts)).numpy()
