"""Model configurations of the msclap-2023 family: full size and a tiny variant for tests (named in
clap_jax.models.registry as 'msclap-2023' and 'msclap-2023-tiny').

Every field here is read by the model; `validate` rejects inconsistent values before anything is built.
"""
from __future__ import annotations

import ml_collections

from clap_jax.audio.io import num_samples


def audio_2023() -> ml_collections.ConfigDict:
    """HTSAT as msclap 2023 builds it (front end from msclap/models/config.py, not the YAML)."""
    c = ml_collections.ConfigDict()
    # Front end. msclap's HTSAT builds its mel filterbank for sr 32000 / fmax 14000 and applies it to a 44.1 kHz
    # STFT; the checkpoint's `melW` overrides whatever is built here when weights are loaded.
    c.sample_rate = 44100          # rate of the waveform fed to the model
    c.duration = 7.0               # seconds per clip (7 * 44100 = 308700 samples)
    c.n_fft = 1024
    c.hop_size = 320
    c.mel_bins = 64
    c.stft = "fft"                 # 'fft': torchlibrosa's periodic-Hann STFT by rFFT (2.5x faster on CPU; the stored
                                   # DFT kernels are not read); 'matmul': the conv STFT with the stored kernels. Loading
                                   # weights picks 'matmul' when their kernels are not the standard ones.
    c.mel_sr = 32000               # filterbank built for 32 kHz (msclap), applied to the 44.1 kHz STFT
    c.fmin = 50.0
    c.fmax = 14000.0
    c.specaug = True               # SpecAugment in training mode (msclap: 2 time stripes <= 64, 2 freq stripes <= 8)
    c.specaug_time_width = 64      # stripe widths are drawn from U{0..width-1} frames / mel bins
    c.specaug_time_stripes = 2
    c.specaug_freq_width = 8
    c.specaug_freq_stripes = 2
    # Swin / HTSAT.
    c.spec_size = 256
    c.patch_size = 4
    c.embed_dim = 96
    c.depths = (2, 2, 6, 2)
    c.num_heads = (4, 8, 16, 32)
    c.window_size = 8
    c.mlp_ratio = 4.0
    c.drop_path_rate = 0.1
    c.num_classes = 527            # tscam head (AudioSet classes)
    return c


def text_2023() -> ml_collections.ConfigDict:
    """GPT-2 small as `transformers.GPT2Config()`."""
    c = ml_collections.ConfigDict()
    c.vocab_size = 50257
    c.n_positions = 1024
    c.n_embd = 768
    c.n_layer = 12
    c.n_head = 12
    c.layer_norm_epsilon = 1e-5
    c.dropout = 0.1                # resid/embd/attn dropout of GPT-2 (training only)
    c.max_length = 77              # tokenizer length
    return c


def clap_2023() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.family = "msclap-2023"       # clap_jax.models.registry: how this config is built and tokenized
    c.audio = audio_2023()
    c.text = text_2023()
    c.d_proj = 1024
    c.proj_dropout = 0.5
    c.logit_scale_init = 2.659260036932778  # log(1 / 0.07)
    c.dtype = "float32"            # compute dtype ("bfloat16" for mixed precision; params stay float32)
    c.remat = False                # rematerialise transformer blocks (saves activation memory in training)
    return c


def tiny() -> ml_collections.ConfigDict:
    """Same code paths at a size that compiles and runs in seconds on a CPU."""
    c = clap_2023()
    c.audio.embed_dim = 8
    c.audio.depths = (1, 2, 1, 1)   # stage 1 has a shifted block
    c.audio.num_heads = (1, 2, 2, 4)
    c.audio.num_classes = 10
    c.text.vocab_size = 50257       # real tokenizer ids
    c.text.n_positions = 80
    c.text.n_embd = 32
    c.text.n_layer = 2
    c.text.n_head = 2
    c.d_proj = 32
    return c


def clip_samples(c: ml_collections.ConfigDict) -> int:
    """Samples per clip fed to the model: audio.duration seconds at audio.sample_rate. The model config owns the
    clip geometry (rate, seconds, text length); data, eval, inference and export derive theirs from it."""
    return num_samples(c.audio.duration, c.audio.sample_rate)


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the field for any inconsistent model setting."""
    if c.get("family", "msclap-2023") != "msclap-2023":   # another family checks its own config
        from clap_jax.models import registry

        fam = registry.family(c.family)
        if fam.validate is not None:
            return fam.validate(c)
    a, t = c.audio, c.text

    def need(ok, field, msg):
        if not ok:
            raise ValueError(f"model config: {field}: {msg}")

    need(len(a.depths) == len(a.num_heads), "audio.depths/num_heads", "must have the same length")
    need(a.spec_size % a.mel_bins == 0, "audio.spec_size", f"must be a multiple of mel_bins={a.mel_bins}")
    need(a.spec_size % a.patch_size == 0, "audio.patch_size", "must divide spec_size")
    grid = a.spec_size // a.patch_size
    need(grid % (2 ** (len(a.depths) - 1)) == 0, "audio.depths", "too many stages for the patch grid")
    for i, h in enumerate(a.num_heads):
        dim = a.embed_dim * 2 ** i
        need(dim % h == 0, f"audio.num_heads[{i}]", f"must divide stage dim {dim}")
        res = grid // 2 ** i
        win = min(a.window_size, res)
        need(res % win == 0, "audio.window_size", f"must divide stage {i} resolution {res}")
    need(a.specaug_time_width >= 1 and a.specaug_freq_width >= 1, "audio.specaug_time_width/freq_width",
         "must be >= 1 (set audio.specaug=False to turn SpecAugment off)")
    need(a.specaug_time_stripes >= 0 and a.specaug_freq_stripes >= 0, "audio.specaug_time_stripes/freq_stripes",
         "must be >= 0")
    need(a.specaug_freq_width <= a.mel_bins, "audio.specaug_freq_width", f"exceeds mel_bins={a.mel_bins}")
    need(a.stft in ("matmul", "fft"), "audio.stft", f"unknown STFT implementation {a.stft!r} ('matmul', 'fft')")
    need(t.n_embd % t.n_head == 0, "text.n_head", f"must divide n_embd={t.n_embd}")
    need(t.max_length <= t.n_positions, "text.max_length", f"exceeds n_positions={t.n_positions}")
    need(c.dtype in ("float32", "bfloat16", "float16"), "dtype", f"unknown dtype {c.dtype!r}")
    need(0.0 <= c.proj_dropout < 1.0, "proj_dropout", "must be in [0, 1)")
    need(a.sample_rate > 0 and a.duration > 0, "audio.sample_rate/duration", "must be positive")
    from clap_jax.models import registry   # registry imports the family modules, which import this one

    need(c.get("family", "msclap-2023") in registry.families(), "family",
         f"unknown model family {c.get('family')!r} (known: {', '.join(registry.families())})")
