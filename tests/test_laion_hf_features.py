"""Our 48 kHz LAION front end against transformers' `ClapFeatureExtractor` (built offline from its constructor with
the LAION checkpoints' settings: 64 mel bins, hop 480, window 1024, 50-14000 Hz, 10 s, 'repeatpad'), on random
audio the test draws.

Agrees (tested): unfused, the Slaney log-mel our model computes inside from the padded or cropped 10 s waveform
is HF's `input_features`; fused, the four HTK log-mel views of a clip up to 10 s, and the three local crops of a
long clip for the same crop positions (numpy's global RandomState seeded as our RandomState).
Differs (tested as differences, so that a change in either shows):
  * the global view of a long clip: HF resizes the whole mel with bilinear interpolation without antialiasing,
    laion_clap (and we) with torchvision's antialiased Resize;
  * HF marks one random row of a fused batch with no long clip as longer even at inference; laion_clap does that
    only in training (we too: HTSAT.forward_fusion with train=True);
  * HF does no int16 round trip (laion_clap's quantisation of the input); these comparisons pass unquantised audio
    (`quantize=False`)."""
import jax.numpy as jnp
import numpy as np

from clap_jax.audio import fusion
from clap_jax.models import registry

SR, CLIP = 48000, 480000


def _extractor():
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(feature_size=64, sampling_rate=SR, hop_length=480, max_length_s=10,
                                fft_window_size=1024, frequency_min=50, frequency_max=14000, padding="repeatpad")


def test_unfused_input_features_equal_our_model_front_end():
    fe = _extractor()
    cfg = registry.model_config("laion-clap-tiny")
    cfg.audio.duration = 10.0
    model = registry.build_model(cfg)
    variables = registry.init_variables(cfg, 0)
    rng = np.random.default_rng(4)
    for n in (int(3.3 * SR), CLIP):
        wave = (rng.standard_normal(n) * 0.2).astype(np.float32)
        hf = fe(wave, sampling_rate=SR, truncation="rand_trunc", padding="repeatpad", return_tensors="np")
        ours_in = fusion.laion_audio_input(wave, np.random.RandomState(0), quantize=False)
        mel = model.apply(variables, jnp.asarray(ours_in["waveform"][None]),
                          method=lambda m, w: m.audio_branch.log_mel(w))
        got, want = np.asarray(mel[0]), hf["input_features"][0, 0]
        assert got.shape == want.shape == (1001, 64)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)
    # a long clip: HF's crop (numpy's global state) is laion's, drawn from a RandomState seeded the same
    wave = (rng.standard_normal(12 * SR) * 0.2).astype(np.float32)
    np.random.seed(11)
    hf = fe(wave, sampling_rate=SR, truncation="rand_trunc", padding="repeatpad", return_tensors="np")
    ours_in = fusion.laion_audio_input(wave, np.random.RandomState(11), quantize=False)
    mel = model.apply(variables, jnp.asarray(ours_in["waveform"][None]), method=lambda m, w: m.audio_branch.log_mel(w))
    np.testing.assert_allclose(np.asarray(mel[0]), hf["input_features"][0, 0], rtol=1e-4, atol=2e-3)


def test_fused_views_agree_except_the_global_view_of_long_clips():
    import torch

    fe = _extractor()
    rng = np.random.default_rng(5)
    short = (rng.standard_normal(int(3.3 * SR)) * 0.2).astype(np.float32)
    hf = fe(short, sampling_rate=SR, truncation="fusion", padding="repeatpad", return_tensors="np")
    ours = fusion.laion_audio_input(short, np.random.RandomState(0), fusion=True, quantize=False)
    np.testing.assert_allclose(ours["mel_fusion"], hf["input_features"][0], rtol=1e-4, atol=2e-3)
    assert not ours["longer"] and bool(hf["is_longer"][0, 0])   # HF: a batch without a long clip gets one

    long = (rng.standard_normal(30 * SR) * 0.2).astype(np.float32)
    np.random.seed(21)
    hf = fe(long, sampling_rate=SR, truncation="fusion", padding="repeatpad", return_tensors="np")
    ours = fusion.laion_audio_input(long, np.random.RandomState(21), fusion=True, quantize=False)
    assert ours["longer"] and bool(hf["is_longer"][0, 0])
    np.testing.assert_allclose(ours["mel_fusion"][1:], hf["input_features"][0, 1:], rtol=1e-4, atol=2e-3)
    # the global view: HF's is the plain bilinear resize of the whole mel, ours the antialiased one (laion's)
    whole = fusion.htk_log_mel(long)
    plain = torch.nn.functional.interpolate(torch.tensor(whole[None, None]), size=[1001, 64], mode="bilinear",
                                            align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(hf["input_features"][0, 0], plain, rtol=1e-4, atol=2e-3)
    gap = np.abs(ours["mel_fusion"][0] - hf["input_features"][0, 0])
    assert gap.mean() > 0.5, gap.mean()      # dB: antialiasing over ~3 frames per output frame smooths the noise
    np.testing.assert_allclose(ours["mel_fusion"][0], fusion.antialias_resize_matrix(3001, 1001) @ whole,
                               rtol=1e-5, atol=1e-3)
