"""Parity with msclap's real version-'2022' code (Cnn14 + BERT), both directions, random weights and inputs.

The oracle (tests/msclap2022_oracle.py) runs msclap's CLAP / AudioEncoder / TextEncoder / Cnn14 unchanged, with a
random transformers BertModel in place of the hub download; the tiny tests shrink Cnn14's conv widths and BERT's
size (msclap's forward code path is the same), the full-size test uses msclap's own widths and bert-base's size.
"""
import jax
import numpy as np
import pytest
import torch

from clap_jax.convert import msclap2022 as cv
from clap_jax.models import registry
from clap_jax.text.bert_tokenizer import BertWordPieceTokenizer
from conftest import rel_err
from msclap2022_oracle import (build_msclap_2022, msclap_audio_outputs_2022, msclap_text_embeddings_2022,
                               msclap_tokenizer_2022, write_vocab)

TEXTS = ["A dog barks twice", "rain falling on a tin roof!", "wow, a siren", "x", "a car passes by. " * 6,
         "the sound of zebras"]
LENGTHS = (220500, 3 * 44100, 8 * 44100)   # 5 s (the model's clip), shorter, longer
TOL = 1e-4


@pytest.fixture(scope="module")
def cfg():
    return registry.model_config("msclap-2022-tiny")


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def oracle(cfg):
    return build_msclap_2022(cfg, seed=3)


def _signals(rng, n, batch=3):
    """Clips that differ in level, colour and tones (white noise alone gives near-identical pooled features)."""
    t = np.arange(n) / 44100
    out = []
    for _ in range(batch):
        x = rng.standard_normal(n) * rng.uniform(0.01, 0.3)
        x = np.cumsum(x) * rng.uniform(0, 0.05) + x                  # some low-frequency colour
        for _ in range(3):
            x += rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * rng.uniform(60, 12000) * t) * (t < rng.uniform(0.5, 8))
        out.append(x / max(1.0, np.abs(x).max()))
    return np.asarray(out, np.float32)


def _ours(cfg, variables, wav, ids, mask):
    model = registry.build_model(cfg)
    audio = jax.jit(lambda v, w: model.apply(v, w, method=model.encode_audio))(variables, wav)
    text = jax.jit(lambda v, i, m: model.apply(v, i, m, method=model.encode_text))(variables, ids, mask)
    mel = model.apply(variables, wav, method=lambda m, w: m.audio_encoder.base.log_mel(w))
    return audio, np.asarray(text), np.asarray(mel)


def _compare(cfg, variables, ref, vocab, rng, lengths=LENGTHS, texts=TEXTS):
    tok = BertWordPieceTokenizer(vocab, max_length=cfg.text.max_length)
    ids, mask = tok(texts)
    for n in lengths:
        wav = _signals(rng, n)
        r = msclap_audio_outputs_2022(ref, wav)
        audio, text, mel = _ours(cfg, variables, wav, ids, mask)
        assert rel_err(mel, r["logmel"]) < TOL, f"log-mel, {n} samples"
        for k in ("latent", "clipwise", "embedding"):
            assert rel_err(audio[k], r[k]) < TOL, f"{k}, {n} samples"
        # the clips are told apart (a test on outputs that ignore the input would pass vacuously)
        assert np.abs(r["embedding"][0] - r["embedding"][1]).max() > 1e-2 * np.abs(r["embedding"]).max()
    ref_text = msclap_text_embeddings_2022(ref, msclap_tokenizer_2022(vocab), texts)
    assert rel_err(text, ref_text) < TOL, "text embedding"
    return text


def test_tokenizer_matches_msclap(vocab):
    tok = BertWordPieceTokenizer(vocab)
    hf = msclap_tokenizer_2022(vocab)
    ids, mask = tok(TEXTS)
    rows = [hf(text=t, add_special_tokens=True, max_length=100, padding="max_length") for t in TEXTS]
    np.testing.assert_array_equal(ids, [r["input_ids"] for r in rows])
    np.testing.assert_array_equal(mask, [r["attention_mask"] for r in rows])
    assert all(sum(r["token_type_ids"]) == 0 for r in rows)   # one segment: the model's zero token types
    assert ids.shape == (len(TEXTS), 100) and (ids[:, 0] == 5).all()   # [CLS] first, no <|endoftext|>
    words = hf.convert_ids_to_tokens(ids[0][mask[0] == 1].tolist())
    assert words == ["[CLS]", "a", "dog", "barks", "twice", "[SEP]"]   # lower-cased


def test_import_tiny_matches_msclap(cfg, oracle, vocab):
    sd = {k: v.numpy() for k, v in oracle.state_dict().items()}
    variables = cv.from_msclap_state_dict(sd, cfg)
    # every BatchNorm's running statistics came across (not left at the 0 / 1 init)
    bs = variables["batch_stats"]["audio_encoder"]["base"]
    assert abs(float(np.mean(bs["bn0"]["mean"])) + 30) < 5 and float(np.min(bs["conv_block6"]["bn2"]["var"])) > 0.5
    text = _compare(cfg, variables, oracle, vocab, np.random.default_rng(11))
    assert np.abs(text[0] - text[1]).max() > 1e-3


def test_export_loads_strict_into_msclap_and_matches(cfg, oracle, vocab, tmp_path):
    # weights at a scale where the input drives the output (the oracle's), every BatchNorm statistic then redrawn
    sd = {k: v.numpy() for k, v in oracle.state_dict().items()}
    variables = jax.device_get(cv.from_msclap_state_dict(sd, cfg))
    rng = np.random.default_rng(0)
    bs = jax.tree.map(lambda x: np.array(x), variables["batch_stats"])
    for path, leaf in jax.tree_util.tree_flatten_with_path(bs)[0]:
        leaf[...] = (rng.uniform(0.5, 1.5, leaf.shape) if path[-1].key == "var" else rng.normal(0, 0.2, leaf.shape))
    bs["audio_encoder"]["base"]["bn0"]["mean"][...] = np.linspace(-40, -10, 64)
    bs["audio_encoder"]["base"]["bn0"]["var"][...] = np.linspace(20, 80, 64)
    variables = dict(variables, batch_stats=bs)
    path = str(tmp_path / "exported.pth")
    cv.save_msclap_2022(variables, cfg, path)
    obj = torch.load(path, weights_only=True)
    ref = build_msclap_2022(cfg, seed=99)
    result = ref.load_state_dict(obj["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(obj["model"]) == set(ref.state_dict())
    _compare(cfg, variables, ref, vocab, np.random.default_rng(12), lengths=(220500,))
    twin = str(tmp_path / "exported.safetensors")
    cv.save_msclap_2022(variables, cfg, twin)
    a, b = cv.read_msclap_file(path)[0], cv.read_msclap_file(twin)[0]
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # and back: the round trip is the identity on every variable
    back, back_cfg = cv.load_msclap_2022(twin)
    assert back_cfg.to_dict() == cfg.to_dict()
    for (p1, x), (p2, y) in zip(jax.tree_util.tree_flatten_with_path(back)[0],
                                jax.tree_util.tree_flatten_with_path(variables)[0]):
        assert p1 == p2
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_full_size_both_directions(vocab):
    """msclap 2022 at full size (Cnn14 64..2048, bert-base): import -> equal outputs; export -> strict load ->
    identical state dict. A file without a stored config gets its architecture from the weights."""
    cfg = registry.model_config("msclap-2022")
    ref = build_msclap_2022(cfg, seed=1)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    inferred = cv.infer_config(sd, source="full")
    assert inferred.to_dict() == cfg.to_dict()
    variables = cv.from_msclap_state_dict(sd, cfg)
    _compare(cfg, variables, ref, vocab, np.random.default_rng(5), lengths=(220500,), texts=TEXTS[:3])
    back = cv.to_msclap_state_dict(variables, cfg)
    assert set(back) == set(sd)
    for k in sd:
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
