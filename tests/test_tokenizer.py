"""Tokenizer ids equal transformers' GPT-2 tokenizer with msclap's settings."""
import numpy as np

from clap_jax.text.tokenizer import EOT_ID, ClapTokenizer, pooled_index

TEXTS = [
    "this is a sound of dog",
    "A man speaks, then a car horn honks twice!",
    "rain!!! on a tin roof",
    "  leading and trailing spaces  ",
    "unicode: café, naïve, 東京, emoji 🎵",
    "numbers 1234 and symbols #@$%^&*()",
    "",
    "<|endoftext|> inside",
    "new\nline\ttab",
]


def test_ids_equal_transformers_with_msclap_rules():
    from transformers import GPT2Tokenizer

    from clap_jax.text.tokenizer import _bundled_bpe_dir

    ref = GPT2Tokenizer.from_pretrained(_bundled_bpe_dir())
    ref.add_special_tokens({"pad_token": "!"})
    tok = ClapTokenizer()
    ids, mask = tok(TEXTS)
    assert ids.shape == mask.shape == (len(TEXTS), 77) and ids.dtype == np.int32
    for i, t in enumerate(TEXTS):
        r = ref(t + " <|endoftext|>", add_special_tokens=True, max_length=77, padding="max_length")
        assert ids[i].tolist() == r["input_ids"], t
        assert mask[i].tolist() == r["attention_mask"], t


def test_known_ids_and_layout():
    ids, _ = ClapTokenizer()(["Hello world", "dog barks!"])
    assert ids[0, :4].tolist() == [15496, 995, 220, EOT_ID]
    assert ids[0, 4:].sum() == 0
    # a literal '!' is id 0 and shifts msclap's pooled index left by one
    assert ids[1, :6].tolist() == [9703, 2318, 591, 0, 220, EOT_ID]
    assert pooled_index(ids).tolist() == [3, ids[1].tolist().index(EOT_ID) - 1]


def test_overlong_text_keeps_eot():
    tok = ClapTokenizer()
    ids, mask = tok(["word " * 200])
    assert ids.shape == (1, 77) and mask.sum() == 77
    assert ids[0, -1] == EOT_ID
    assert pooled_index(ids)[0] == 76
