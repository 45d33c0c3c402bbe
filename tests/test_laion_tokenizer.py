"""RoBERTa BPE tokenization wired as laion_clap does it (77 tokens, <pad> = 1, truncation keeping </s>), from
vocabulary files the test writes itself, checked against laion_clap's own `CLAP_Module.tokenizer` and
`get_text_embedding` on the same files."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from clap_jax.convert import laion as cv
from clap_jax.errors import UserError
from clap_jax.models import registry
from clap_jax.models.laion import normalize
from clap_jax.text.roberta_tokenizer import RobertaTokenizer
from conftest import rel_err
import laion_oracle as lo
from laion_oracle import write_bpe


TEXTS = ["a dog barks", "rain on the dog bar", "Ünïcödé rain!", "dog " * 100]


def test_matches_laion_tokenizer_and_text_embedding(tmp_path):
    from transformers import RobertaTokenizer as HFRoberta

    d = write_bpe(tmp_path)
    ours = RobertaTokenizer(str(d))
    ids, mask = ours(TEXTS)
    assert ids.shape == (4, 77) and ids.dtype == np.int32
    assert (ids[:, 0] == 0).all() and ids[3, 76] == 2 and mask[3].all()       # over-long: cut, </s> kept last
    assert ids[0, int(mask[0].sum()) - 1] == 2 and (ids[0, int(mask[0].sum()):] == 1).all()
    dog = json.loads((d / "vocab.json").read_text())["Ġdog"]
    assert dog in ids[0] and dog in ids[1]                                    # the merges are applied

    cfg = registry.model_config("laion-clap-tiny")
    ref = lo.build_laion(cfg, seed=4)
    ref.tokenize = HFRoberta.from_pretrained(str(d))   # what laion loads from 'roberta-base', from our files
    theirs = ref.tokenizer(TEXTS)                                             # laion_clap's call and settings
    np.testing.assert_array_equal(ids, theirs["input_ids"].numpy())
    np.testing.assert_array_equal(mask, theirs["attention_mask"].numpy())
    want = ref.get_text_embedding(TEXTS)
    variables = cv.from_laion_state_dict(lo.state_dict(ref), cfg, "oracle")
    model = registry.build_model(cfg)
    got = normalize(model.apply(variables, jnp.asarray(ids), jnp.asarray(mask), method=model.encode_text))
    assert rel_err(got, want) < 1e-4
    # the family's tokenizer is this one, and a file path inside the directory works as the source
    fam_tok = registry.tokenizer(cfg, str(d / "vocab.json"))
    np.testing.assert_array_equal(fam_tok(TEXTS)[0], ids)


def test_bad_sources_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="merges.txt"):
        (tmp_path / "only").mkdir()
        (tmp_path / "only" / "vocab.json").write_text("{}")
        RobertaTokenizer(str(tmp_path / "only"))(["x"])
    d = write_bpe(tmp_path / "bad") if (tmp_path / "bad").mkdir() is None else None
    v = json.loads((d / "vocab.json").read_text())
    v["<pad>"], v["<unk>"] = v["<unk>"], v["<pad>"]
    (d / "vocab.json").write_text(json.dumps(v))
    with pytest.raises(UserError, match=r"vocab\.json.*<pad>=3"):
        RobertaTokenizer(str(d))(["x"])
    with pytest.raises(UserError, match="no-such-model-here"):
        RobertaTokenizer("no-such-model-here")(["x"])
