"""LAION feature fusion in the training pipeline: the Grain pipeline makes laion_clap's fusion input (four HTK
log-mel views + the long-clip flag) from whole stored clips, deterministically per seed, equal to
clap_jax.audio.fusion's (itself checked against laion_clap in test_parity_laion) for the same crop positions;
random batches of a fused model get theirs on the devices."""
import json
import os

import jax
import numpy as np
import soundfile as sf

from clap_jax.audio import fusion
from clap_jax.data import pipeline, preprocess, synthetic
from clap_jax.models import registry

from laion_oracle import write_bpe

SR = 48000


def write_clips(d, seconds, seed=0):
    """Built-in-like synthetic clips (clap_jax.data.synthetic's sounds and captions) of the given lengths at
    48 kHz, preprocessed into d/tfr (stored whole). -> (TFRecord dir, vocabulary dir)."""
    os.makedirs(d / "wav", exist_ok=True)
    rows = []
    for i, sec in enumerate(seconds):
        _, wave, caps = synthetic.make_clip(seed, "train", i, sec, SR)
        sf.write(d / "wav" / f"{i}.wav", wave, SR, subtype="PCM_16")
        rows.append({"id": f"train/{i}", "path": f"wav/{i}.wav", "captions": caps, "split": "train"})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    preprocess.run([str(d / "train.jsonl")], str(d / "tfr"), root=str(d),
                   opts=preprocess.Options(sample_rate=SR, audio_format="pcm16"), progress=False)
    (d / "bpe").mkdir(exist_ok=True)
    return str(d / "tfr"), str(write_bpe(d / "bpe"))


def _first_batch(data, vocab, seed, settings, batch=3, crop="random"):
    ds = pipeline.build_dataset(data, per_host_batch_size=batch, seed=seed, num_epochs=1, shuffle=False,
                                sample_rate=SR, duration=10.0, tokenizer=vocab, tokenizer_family="laion-clap",
                                fusion=settings, crop=crop, process_index=0, process_count=1)
    return next(iter(ds))


def test_pipeline_views_equal_fusion_for_the_same_crops_and_follow_the_seed(tmp_path):
    seconds = [30.0, 4.0, 10.0]
    data, vocab = write_clips(tmp_path, seconds)
    settings = fusion.settings(registry.model_config("laion-htsat-tiny-fusion"))
    assert settings == dict(sr=48000, n_fft=1024, hop=480, n_mels=64, fmin=50.0, fmax=14000.0)
    b = _first_batch(data, vocab, 1, settings)
    assert "audio" not in b and b["mel_fusion"].shape == (3, 4, 1001, 64) and b["mel_fusion"].dtype == np.float32
    assert b["longer"].tolist() == [True, False, False]      # exactly 10 s is not longer
    starts = b["fusion_starts"]
    assert starts[1].tolist() == [-1, -1, -1] and starts[2].tolist() == [-1, -1, -1]
    total = 30 * SR // 480 + 1
    thirds = np.array_split(np.arange(total - 1001 + 1), 3)
    assert all(r[0] <= s <= r[-1] for r, s in zip(thirds, starts[0]))  # one start from each third
    for i in range(3):
        stored, sr = sf.read(tmp_path / "wav" / f"{i}.wav", dtype="int16")
        assert sr == SR and len(stored) == int(seconds[i] * SR)
        want = fusion.laion_audio_input(stored.astype(np.float32) / 32768, fusion.FixedDraws(starts=starts[i]),
                                        fusion=True, **settings)
        np.testing.assert_array_equal(b["mel_fusion"][i], want["mel_fusion"])
        assert bool(b["longer"][i]) == want["longer"]
    # the global view is the whole clip resized, the local ones are crops of the whole clip's mel
    whole = fusion.htk_log_mel(fusion.quantize_int16(sf.read(tmp_path / "wav" / "0.wav", dtype="float32")[0]))
    np.testing.assert_array_equal(b["mel_fusion"][0, 2], whole[starts[0][1]:starts[0][1] + 1001])

    again = _first_batch(data, vocab, 1, settings)
    for k in ("mel_fusion", "longer", "fusion_starts", "input_ids"):
        np.testing.assert_array_equal(again[k], b[k])
    other = _first_batch(data, vocab, 2, settings)
    assert other["fusion_starts"][0].tolist() != starts[0].tolist()
    assert not np.array_equal(other["mel_fusion"][0], b["mel_fusion"][0])
    np.testing.assert_array_equal(other["mel_fusion"][1:], b["mel_fusion"][1:])   # short clips: no draw

    ev = _first_batch(data, vocab, 1, settings, crop="start")   # evaluation: the first start of each third
    assert ev["fusion_starts"][0].tolist() == [int(r[0]) for r in thirds]


def test_random_batches_of_a_fused_model_carry_the_short_clip_views():
    from clap_jax.models.laion import LaionCLAP
    from clap_jax.train import laion as laion_train
    from clap_jax.train.random_batches import RandomBatches

    cfg = registry.model_config("laion-clap-tiny-fusion")
    cfg.audio.duration = 0.5
    it = laion_train.FusionViews(RandomBatches(batch_size=2, num_samples=24000, text_len=77, seed=3), cfg)
    b = next(it)
    assert "audio" not in b and b["mel_fusion"].shape == (2, 4, 51, 64) and not np.asarray(b["longer"]).any()
    wave = RandomBatches(batch_size=2, num_samples=24000, text_len=77, seed=3).__next__()["audio"]
    want = fusion.laion_audio_input(wave[0], np.random.RandomState(0), clip_samples=24000, fusion=True,
                                    quantize=False, **fusion.settings(cfg))
    np.testing.assert_allclose(np.asarray(b["mel_fusion"][0]), want["mel_fusion"], rtol=1e-4, atol=2e-3)
    # the model's own short-clip path (a plain waveform) is the same input
    model = LaionCLAP(cfg)
    variables = registry.init_variables(cfg, 0)
    e1 = model.apply(variables, {"mel_fusion": b["mel_fusion"], "longer": b["longer"]}, method="encode_audio")
    e2 = model.apply(variables, jax.numpy.asarray(wave), method="encode_audio")
    np.testing.assert_allclose(np.asarray(e1["embedding"]), np.asarray(e2["embedding"]), rtol=1e-5, atol=1e-5)
    assert it.get_state() == {"index": 1, "seed": 3}
