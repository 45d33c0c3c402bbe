"""The JAX front end against torchlibrosa / PyTorch, on random inputs."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from clap_jax.audio import frontend
from conftest import rel_err


@pytest.mark.parametrize("t_in,t_out", [(965, 1024), (414, 1024), (7, 20), (1023, 1024)])
def test_bicubic_matches_torch(t_in, t_out):
    x = np.random.default_rng(t_in).standard_normal((2, t_in, 5)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], (t_out, 5), mode="bicubic",
                                          align_corners=True)[:, 0].numpy()
    ours = np.asarray(frontend.resize_time(jnp.asarray(x), t_out))
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) < 1e-5


def test_stft_and_logmel_match_torchlibrosa():
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    wav = np.random.default_rng(0).standard_normal((2, 44100)).astype(np.float32) * 0.3
    spec = Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True, pad_mode="reflect",
                       freeze_parameters=True)
    mel = LogmelFilterBank(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000, ref=1.0, amin=1e-10, top_db=None,
                           freeze_parameters=True)
    with torch.no_grad():
        p_ref = spec(torch.from_numpy(wav))
        lm_ref = mel(p_ref)[:, 0].numpy()
    real, imag = frontend.stft_kernels(1024)
    p = frontend.power_spectrogram(jnp.asarray(wav), jnp.asarray(real), jnp.asarray(imag), 320)
    assert p.shape == (2, 44100 // 320 + 1, 513)
    assert rel_err(p, p_ref[:, 0].numpy()) < 1e-5
    p_fft = frontend.power_spectrogram_fft(jnp.asarray(wav), 1024, 320)  # the config's stft='fft'
    assert rel_err(p_fft, p_ref[:, 0].numpy()) < 1e-5
    mel_w = frontend.mel_filterbank(32000, 1024, 64, 50, 14000)
    np.testing.assert_allclose(mel_w, mel.melW.numpy(), rtol=1e-6, atol=1e-9)
    assert np.abs(np.asarray(frontend.log_mel(p, jnp.asarray(mel_w))) - lm_ref).max() < 1e-3  # dB


def test_fold_matches_msclap_reshape(tiny_msclap):
    x = np.random.default_rng(1).standard_normal((2, 1024, 64)).astype(np.float32)
    ref = tiny_msclap.audio_encoder.base.htsat.reshape_wav2img(torch.from_numpy(x)[:, None])[:, 0].numpy()
    ours = np.asarray(frontend.fold_to_image(jnp.asarray(x), 256, 4))
    np.testing.assert_array_equal(ours, ref)
    # the documented layout: img[k*64 + f, c] = x[256k + c, f]
    assert ours[0, 2 * 64 + 5, 17] == x[0, 2 * 256 + 17, 5]


def test_spec_augment_zeroes_bounded_stripes():
    import jax

    x = jnp.ones((16, 200, 64))
    y = np.asarray(frontend.spec_augment(jax.random.PRNGKey(0), x))
    assert set(np.unique(y)) <= {0.0, 1.0}
    for e in y:
        dropped_t = np.where((e == 0).all(axis=1))[0]
        dropped_f = np.where((e == 0).all(axis=0))[0]
        assert len(dropped_t) <= 2 * 63 and len(dropped_f) <= 2 * 7
        # everything zeroed lies in a dropped row or a dropped column
        zero = e == 0
        zero[dropped_t] = False
        zero[:, dropped_f] = False
        assert not zero.any()
    assert (y == 0).any()
    # different keys, different masks
    assert not np.array_equal(y, np.asarray(frontend.spec_augment(jax.random.PRNGKey(1), x)))
