"""BLEU-1..4, METEOR and ROUGE-L beside CIDEr-D in the caption scores (pycocoevalcap, METEOR through Java)."""
import math

import pytest

from clap_jax.eval import captioning


def test_bleu_rouge_meteor_against_hand_values():
    # one clip: every candidate word is in a reference (precision 1); the closest reference length is 4 for a
    # 3-word candidate, so the brevity penalty is exp(1 - 4/3)
    s = captioning.coco_scores(["A dog, barks!"], [["a dog barks loudly", "a big cat sat"]])
    assert s["BLEU-1"] == pytest.approx(math.exp(1 - 4 / 3), rel=1e-6)
    # bigrams: 2 of 2 match; BLEU-2 = BP * sqrt(p1 * p2)
    assert s["BLEU-2"] == pytest.approx(math.exp(1 - 4 / 3), rel=1e-4)
    # ROUGE-L (beta 1.2), the COCO way: the best LCS precision and the best LCS recall over the references
    # (3/3 and 3/4 with the first, 1/3 and 1/4 with the second)
    p, r, beta = 1.0, 0.75, 1.2
    assert s["ROUGE-L"] == pytest.approx((1 + beta ** 2) * p * r / (r + beta ** 2 * p), rel=1e-6)
    assert 0.0 < s["METEOR"] < 1.0 and "coco_error" not in s

    same = captioning.coco_scores(["rain falls on a tin roof"], [["rain falls on a tin roof", "rain"]])
    assert same["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and same["ROUGE-L"] == pytest.approx(1.0)
    assert same["METEOR"] > 0.9
    none = captioning.coco_scores(["birds chirping"], [["an engine idles", "a car engine"]])
    assert none["BLEU-1"] < 1e-6 and none["ROUGE-L"] == 0.0 and none["METEOR"] == 0.0


def test_score_captions_reports_them_beside_cider():
    out = captioning.score_captions(["a dog barks", "rain"], [["a dog barks", "dog"], ["rain", "heavy rain"]],
                                    spice_jar="/nonexistent/spice.jar")
    for k in ("CIDEr-D", "BLEU-1", "BLEU-4", "METEOR", "ROUGE-L"):
        assert k in out and k in captioning.METRICS
    assert "SPIDEr" not in out and "spice_error" in out
    with pytest.raises(ValueError, match="2 candidates but 1"):
        captioning.coco_scores(["a", "b"], [["a"]])
