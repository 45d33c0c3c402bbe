"""laion_clap 1.1.7's real PyTorch code, built offline, as the parity oracle for the LAION-CLAP family.

laion_clap is installed with --no-deps (its pins, numpy<2 among them, break jax). The few packages its import
chain needs (torchaudio, torchvision, webdataset, h5py, ...) live in a separate directory (scripts/setup.sh puts
them in $CLAP_JAX_LAION_DEPS, default ~/.cache/clap_jax/laion_oracle_deps) that only this module puts on
sys.path, so nothing else sees them. Offline stand-ins:
  - torchaudio's compiled extension is not installed (its MelSpectrogram is pure torch); torchvision's C++ ops do
    not match this torch build, so the `torchvision::nms`/`qnms` schemas its import registers fakes for are
    defined first (nothing here calls them);
  - the BERT/RoBERTa/BART tokenizers laion's data module loads at import are mocks (token ids are fed directly);
  - `RobertaModel.from_pretrained('roberta-base')` returns a random `RobertaModel` of the requested size.
"""
from __future__ import annotations

import os
import sys
from unittest import mock

import numpy as np

DEPS = os.environ.get("CLAP_JAX_LAION_DEPS", os.path.expanduser("~/.cache/clap_jax/laion_oracle_deps"))


def _import_laion():
    if "laion_clap" in sys.modules:
        return sys.modules["laion_clap"]
    import importlib.util

    if importlib.util.find_spec("laion_clap") is None:
        raise ImportError("laion_clap is not installed: bash scripts/setup.sh (pip install --no-deps "
                          "laion-clap==1.1.7 plus its oracle dependencies)")
    if not os.path.isdir(DEPS):
        raise ImportError(f"{DEPS}: laion_clap's oracle dependencies are missing: bash scripts/setup.sh")
    if DEPS not in sys.path:
        sys.path.append(DEPS)
    import torch
    import transformers

    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:   # already defined (a second import in the same process)
            pass
    with mock.patch.object(transformers.BertTokenizer, "from_pretrained"), \
            mock.patch.object(transformers.RobertaTokenizer, "from_pretrained"), \
            mock.patch.object(transformers.BartTokenizer, "from_pretrained"):
        import laion_clap
    return laion_clap


def roberta_config(t):
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
                         num_attention_heads=t.num_heads, intermediate_size=t.intermediate_size,
                         max_position_embeddings=t.max_position_embeddings, type_vocab_size=t.type_vocab_size,
                         layer_norm_eps=t.layer_norm_eps, pad_token_id=t.pad_token_id, bos_token_id=0,
                         eos_token_id=2)


def build_laion(cfg, seed: int = 0):
    """laion_clap `CLAP_Module` (eval mode) with random weights, sized like our model config `cfg`."""
    import torch
    from transformers import RobertaModel

    _import_laion()
    import clap_module.model as lmodel
    from clap_module.htsat import HTSAT_Swin_Transformer
    from laion_clap import CLAP_Module

    a, t = cfg.audio, cfg.text
    fusion = bool(a.get("fusion", False))
    size = "tiny" if a.embed_dim == 96 and tuple(a.depths) == (2, 2, 6, 2) else "base"
    torch.manual_seed(seed)
    with mock.patch.object(lmodel.RobertaModel, "from_pretrained", lambda *x, **k: RobertaModel(roberta_config(t))), \
            mock.patch("laion_clap.hook.RobertaTokenizer.from_pretrained"):
        wrapper = CLAP_Module(enable_fusion=fusion, device="cpu", amodel=f"HTSAT-{size}")
    model = wrapper.model
    latent = a.embed_dim * 2 ** (len(a.depths) - 1)
    standard = {"tiny": (96, (2, 2, 6, 2)), "base": (128, (2, 2, 12, 2))}[size]
    if (a.embed_dim, tuple(a.depths), tuple(a.num_heads), a.num_classes) != standard + ((4, 8, 16, 32), 527):
        model.audio_branch = HTSAT_Swin_Transformer(
            spec_size=256, patch_size=4, patch_stride=(4, 4), num_classes=a.num_classes, embed_dim=a.embed_dim,
            depths=list(a.depths), num_heads=list(a.num_heads), window_size=8, config=model.audio_cfg,
            enable_fusion=fusion, fusion_type="aff_2d" if fusion else "None")
    d = cfg.d_joint
    if d != 512 or latent != model.audio_projection[0].in_features or t.hidden_size != 768:
        model.audio_projection = torch.nn.Sequential(torch.nn.Linear(latent, d), torch.nn.ReLU(),
                                                     torch.nn.Linear(d, d))
        model.text_projection = torch.nn.Sequential(torch.nn.Linear(t.hidden_size, d), torch.nn.ReLU(),
                                                    torch.nn.Linear(d, d))
        model.audio_transform = lmodel.MLPLayers(units=[d, d, d], dropout=0.1)
        model.text_transform = lmodel.MLPLayers(units=[d, d, d], dropout=0.1)
    # Non-trivial values for everything the default init leaves at 0/1 (biases, norms, BatchNorm statistics,
    # logit scales), so that a mapping error anywhere shows up in the outputs.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "LayerNorm" in name or "bn" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            if "relative_position_bias_table" in name:
                p.normal_(0.0, 0.5, generator=g)
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                if not name.endswith("bn0"):
                    m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g))
                    m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
                if name.endswith("bn0"):
                    m.running_mean.copy_(-30 + 5 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(50 + 20 * torch.rand(m.running_var.shape, generator=g))
                else:
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        model.logit_scale_a.fill_(3.1)
        model.logit_scale_t.fill_(2.3)
    wrapper.eval()
    return wrapper


def state_dict(wrapper) -> dict:
    """{key: numpy} of the wrapped CLAP, as a laion .pt holds it without the 'module.' prefix."""
    return {k: v.detach().numpy() for k, v in wrapper.model.state_dict().items()}


def audio_inputs(wrapper, waves, seed: int) -> list[dict]:
    """laion_clap's `get_audio_features` for each clip (its int16 round trip first), numpy's global generator
    seeded with `seed` before the first clip (so RandomState(seed) replays the same crop positions)."""
    import torch

    laion = _import_laion()
    data = sys.modules["laion_clap.training.data"]
    np.random.seed(seed)
    out = []
    for w in waves:
        w = torch.from_numpy(data.int16_to_float32(data.float32_to_int16(np.asarray(w, np.float32)))).float()
        out.append(data.get_audio_features({}, w, 480000, data_truncating="fusion" if wrapper.enable_fusion
                                           else "rand_trunc", data_filling="repeatpad",
                                           audio_cfg=wrapper.model_cfg["audio_cfg"]))
    del laion
    return out


def audio_embeddings(wrapper, inputs: list[dict]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return wrapper.model.get_audio_embedding([dict(d) for d in inputs]).numpy()


def text_embeddings(wrapper, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return wrapper.model.get_text_embedding({"input_ids": torch.from_numpy(np.asarray(ids, np.int64)),
                                                 "attention_mask": torch.from_numpy(np.asarray(mask, np.int64))}
                                                ).numpy()


def logit_scales(wrapper) -> tuple[float, float]:
    a, t = wrapper.model.get_logit_scale()
    return float(a), float(t)


def _byte_chars():
    """GPT-2 / RoBERTa's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_bpe(d):
    """A small RoBERTa-style vocabulary (byte alphabet, a few merges, <s>=0 <pad>=1 </s>=2) in directory `d`."""
    import json

    merges = [("Ġ", "d"), ("o", "g"), ("Ġd", "og"), ("Ġ", "b"), ("a", "r"), ("Ġb", "ar"), ("k", "s"),
              ("Ġ", "r"), ("a", "i"), ("Ġr", "ai"), ("Ġrai", "n")]
    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + _byte_chars() + ["".join(m) for m in merges] + ["<mask>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return d
