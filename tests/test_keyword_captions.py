"""Keyword-to-caption through `python -m clap_jax.data.preprocess`: templates by default, or a tiny randomly
initialised local T5 (byte-level tokenizer, built here) run in batches; the records hold the generated captions
beside the labels and dataset.json names the generator."""
import json
import os

import pytest

from clap_jax.data import keyword_captions, preprocess
from clap_jax.errors import UserError
from data_fixtures import write_clip
from test_data_preprocess import _records

SR = 8000


def _tiny_t5(d):
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg)
    with torch.no_grad():   # make letters (bytes a-z, ids 100-125) win: the random model writes words
        letters = torch.zeros(384, dtype=torch.bool)
        letters[3 + ord("a"):3 + ord("z") + 1] = True
        model.lm_head.weight[~letters] = 0.0
        model.lm_head.weight[letters] *= 50.0
    model.save_pretrained(str(d))
    ByT5Tokenizer().save_pretrained(str(d))
    return str(d)


def _manifest(tmp_path):
    for i, n in enumerate("abc"):
        write_clip(str(tmp_path / f"{n}.wav"), 0.2, SR, seed=i)
    (tmp_path / "m.csv").write_text("path,labels,caption\na.wav,Dog|Bark,\nb.wav,Rain,it rains\nc.wav,Siren,\n")
    return str(tmp_path / "m.csv")


def test_templates_by_default_and_t5_generator(tmp_path):
    man = _manifest(tmp_path)
    out = str(tmp_path / "tpl")
    preprocess.main(["-m", man, "--root", str(tmp_path), "-o", out, "--quiet", "-j", "1", "--sample-rate", str(SR)])
    _, recs = _records(out)
    assert [c.decode() for c in recs["a.wav"]["captions"]] == ["this is a sound of Dog, Bark"]
    assert json.load(open(os.path.join(out, "dataset.json")))["settings"]["caption_generator"] == "template"

    t5 = _tiny_t5(tmp_path / "t5")
    gen = keyword_captions.make_generator(t5)
    want = gen([["Dog", "Bark"], ["Siren"]])
    assert all(want) and want[0] != want[1]
    assert gen([["Dog", "Bark"]]) == want[:1]                       # deterministic, batch size does not matter
    out2 = str(tmp_path / "gen")
    preprocess.main(["-m", man, "--root", str(tmp_path), "-o", out2, "--quiet", "-j", "1", "--sample-rate", str(SR),
                     "--caption-generator", t5])
    _, recs2 = _records(out2)
    assert [c.decode() for c in recs2["a.wav"]["captions"]] == want[:1]
    assert [c.decode() for c in recs2["c.wav"]["captions"]] == want[1:]
    assert [c.decode() for c in recs2["b.wav"]["captions"]] == ["it rains"]      # a row with a caption keeps it
    assert [x.decode() for x in recs2["a.wav"]["labels"]] == ["Dog", "Bark"]      # labels stored beside it
    assert json.load(open(os.path.join(out2, "dataset.json")))["settings"]["caption_generator"] == t5


def test_bad_generator_is_a_clear_error(tmp_path):
    man = _manifest(tmp_path)
    with pytest.raises(UserError, match="no-such-dir.*not 'template'"):
        preprocess.main(["-m", man, "--root", str(tmp_path), "-o", str(tmp_path / "o"), "--quiet", "-j", "1",
                         "--caption-generator", str(tmp_path / "no-such-dir")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty.*config.json"):
        keyword_captions.make_generator(str(tmp_path / "empty"))
