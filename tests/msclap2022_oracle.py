"""msclap's real version-'2022' model (Cnn14 + BERT), built offline with random weights: the parity oracle.

msclap builds `CLAP(audioenc_name='Cnn14', ..., text_model='bert-base-uncased', ...)`; its text tower comes from
`AutoModel.from_pretrained('bert-base-uncased')`, replaced here by a randomly initialised transformers `BertModel`
of the requested size (BertConfig). msclap's own TextEncoder, AudioEncoder, Projection and Cnn14 classes run
unchanged. For a reduced size, msclap's Cnn14 is built as it is and its six `ConvBlock`s, `fc1` and `fc_audioset`
are replaced by msclap's own ConvBlock / torch Linear of the smaller widths: Cnn14.forward's code path is the same
(msclap hard-codes the widths 64..2048 in Cnn14.__init__ only). bn0 stays BatchNorm2d(64) (64 mel bins).
"""
from __future__ import annotations

import numpy as np

from msclap_oracle import _import_models


def build_msclap_2022(cfg, seed: int = 0):
    """msclap `CLAP` for version '2022' (eval mode) with random weights, sized like our model config `cfg`."""
    import torch
    from transformers import BertConfig, BertModel

    mclap, _, _ = _import_models()
    import msclap.models.audio as maudio

    t, a = cfg.text, cfg.audio
    bert_cfg = BertConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
                          num_attention_heads=t.num_heads, intermediate_size=t.intermediate_size,
                          max_position_embeddings=t.max_position_embeddings, type_vocab_size=t.type_vocab_size,
                          layer_norm_eps=t.layer_norm_eps)
    torch.manual_seed(seed)
    orig = mclap.AutoModel.from_pretrained
    mclap.AutoModel.from_pretrained = lambda *args, **kw: BertModel(bert_cfg)
    try:
        model = mclap.CLAP("Cnn14", a.sample_rate, a.n_fft, a.hop_size, a.mel_bins, int(a.fmin), int(a.fmax),
                           a.num_classes, a.out_emb, "bert-base-uncased", t.hidden_size, cfg.d_proj)
    finally:
        mclap.AutoModel.from_pretrained = orig
    base = model.audio_encoder.base
    if tuple(a.channels) != (64, 128, 256, 512, 1024, 2048):
        cin = 1
        for i, ch in enumerate(a.channels):
            setattr(base, f"conv_block{i + 1}", maudio.ConvBlock(in_channels=cin, out_channels=ch))
            cin = ch
        base.fc1 = torch.nn.Linear(cin, a.out_emb, bias=True)
        base.fc_audioset = torch.nn.Linear(a.out_emb, a.num_classes, bias=True)
    # Non-trivial values for everything the default init leaves at 0/1 (biases, norms, every BatchNorm's running
    # statistics, logit scale), so that a mapping slip anywhere shows in the outputs.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in base.modules():   # PANNs-like scale, so that the input, not the biases, drives the output
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight, generator=g)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or ".bn" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.running_mean.shape[0]
                if name.endswith("bn0"):   # dB-scale log-mel statistics
                    m.running_mean.copy_(-30 + 5 * torch.randn(n, generator=g))
                    m.running_var.copy_(50 + 20 * torch.rand(n, generator=g))
                else:
                    m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(7)
        model.logit_scale.fill_(3.1)
    return model.eval()


def msclap_text_inputs_2022(tokenizer, texts, max_length: int = 100):
    """msclap's preprocess_text for a BERT model: encode_plus(text) padded to 100, no suffix, no truncation;
    input_ids, token_type_ids and attention_mask. (transformers 5 dropped `encode_plus`; calling the tokenizer
    on one text with the same arguments is what it did.)"""
    import torch

    rows = [tokenizer(text=t, add_special_tokens=True, max_length=max_length, padding="max_length")
            for t in texts]
    return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "token_type_ids", "attention_mask")}


def msclap_audio_outputs_2022(model, wav: np.ndarray) -> dict:
    import torch

    x = torch.from_numpy(np.asarray(wav, np.float32))
    base = model.audio_encoder.base
    with torch.no_grad():
        logmel = base.logmel_extractor(base.spectrogram_extractor(x))[:, 0]
        out = base(x)
        emb, clip = model.audio_encoder(x)
    return {"logmel": logmel.numpy(), "latent": out["embedding"].numpy(), "clipwise": clip.numpy(),
            "embedding": emb.numpy()}


def msclap_text_embeddings_2022(model, tokenizer, texts) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.caption_encoder(msclap_text_inputs_2022(tokenizer, texts)).numpy()


def write_vocab(directory, words=("a", "dog", "barks", "twice", "rain", "fall", "##ing", "on", "tin", "roof", "wow",
                                  "siren", "car", "pass", "##es", "by", "x", "!", ",", ".", "the", "sound", "of",
                                  "this", "is", "bird", "music")) -> str:
    """A small BERT vocabulary file (special tokens first, [PAD] = 0) in `directory`; returns the directory."""
    import os

    os.makedirs(directory, exist_ok=True)
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(words)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return str(directory)


def msclap_tokenizer_2022(directory):
    """What msclap's `AutoTokenizer.from_pretrained('bert-base-uncased')` resolves to, from a local directory."""
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(directory))
