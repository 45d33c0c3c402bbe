"""Metrics against hand-computed examples and sklearn."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from clap_jax.eval import metrics, paper


def test_accuracy_hand_example():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.4, 0.0]])
    assert metrics.accuracy(scores, np.array([1, 0, 0, 0])) == 0.75


def test_average_precision_hand_example():
    # ranking: pos, neg, pos, neg -> precisions at the hits 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    ap = metrics.average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(60) < 0.3
    y[0] = True
    s = np.round(rng.random(60), 1)  # many tied scores
    assert metrics.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_macro_map_matches_sklearn_and_drops_classes_without_positives():
    rng = np.random.default_rng(3)
    y = rng.random((50, 6)) < 0.25
    y[:, 5] = False                      # a class with no positive
    s = rng.standard_normal((50, 6))
    value, info = metrics.macro_map(y, s, return_info=True)
    expected = average_precision_score(y[:, :5], s[:, :5], average="macro")
    assert value == pytest.approx(expected, abs=1e-12)
    assert info == {"classes_scored": 5, "classes_without_positives": 1}
    # sigmoid is monotonic: same mAP on probabilities
    assert metrics.macro_map(y, 1 / (1 + np.exp(-s))) == pytest.approx(value)


def test_binarize_rules():
    logits = np.array([[3.0, 1.0, -2.0], [-1.0, -0.5, 0.2]])
    assert metrics.binarize(logits, "top1").tolist() == [[True, False, False], [False, False, True]]
    assert metrics.binarize(logits, "top2").tolist() == [[True, True, False], [False, True, True]]
    assert metrics.binarize(logits, "sigmoid>0.5").tolist() == [[True, True, False], [False, False, True]]
    assert metrics.binarize(logits, "top1+sigmoid>0.7").tolist() == [[True, True, False], [False, False, True]]
    with pytest.raises(ValueError, match="unknown threshold rule"):
        metrics.binarize(logits, "best")


def test_instance_f1_hand_example():
    t = np.array([[1, 0, 1], [0, 1, 0]])
    p = np.array([[1, 1, 0], [0, 1, 0]])
    out = metrics.instance_f1(t, p)  # TP 2, FP 1, FN 1
    assert (out["tp"], out["fp"], out["fn"]) == (2, 1, 1)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)


def test_retrieval_hand_example():
    # 2 audios, 4 captions; captions 0,1 describe audio 0; 2,3 describe audio 1.
    sim = np.array([[0.9, 0.1, 0.8, 0.0],
                    [0.2, 0.5, 0.7, 0.3]])
    m = metrics.retrieval_metrics(sim, np.array([0, 0, 1, 1]))
    # text->audio ranks: cap0 -> a0 rank 1; cap1 -> a0 rank 2 (0.1 < 0.5); cap2 -> a1 rank 2; cap3 -> a1 rank 1
    assert m["t2a_R@1"] == 0.5
    assert m["t2a_mAP@10"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
    # audio->text: a0 ranks its captions 0 (0.9) 2 (0.8) 1 (0.1) 3 -> refs at ranks 1, 3
    #              a1 ranks 2 (0.7) 1 (0.5) 3 (0.3) 0 -> refs at ranks 1, 3
    assert m["a2t_R@1"] == 1.0
    assert m["a2t_mAP@10"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + (1 / 1 + 2 / 3) / 2) / 2)
    assert m["a2t_R@5"] == 1.0 and m["t2a_R@5"] == 1.0


def test_retrieval_map_at_10_cuts_off_beyond_rank_10():
    n = 12
    sim = -np.arange(n, dtype=float)[None, :].repeat(n, 0)   # every query ranks items 0..11 in order
    m = metrics.retrieval_metrics(sim, np.arange(n))
    ranks = np.arange(1, n + 1)
    assert m["t2a_mAP@10"] == pytest.approx(np.mean(np.where(ranks <= 10, 1 / ranks, 0)))
    assert m["t2a_R@1"] == pytest.approx(1 / n)


def test_cider_d_identity_disjoint_and_hand_example():
    refs = [["a dog barks loudly"], ["rain falls on a roof"]]
    assert metrics.cider_d(["a dog barks loudly", "rain falls on a roof"], refs) == pytest.approx(10.0)
    assert metrics.cider_d(["zzz", "qqq"], refs) == 0.0
    # hand example: 2 items; candidate 0 = "a dog" vs ref "a dog barks": unigram idf: 'a' occurs in both refs ->
    # idf 0; 'dog','barks' idf log 2. cand unigram vec {dog: l}, ref {dog: l, barks: l}: cos = l^2/(l * l*sqrt2).
    # bigrams: cand {(a,dog): l}, ref {(a,dog): l, (dog,barks): l} -> 1/sqrt2; 3,4-grams: cand empty -> 0.
    # length penalty exp(-(2-3)^2/72). Score = 10 * (2/sqrt2)/4 * penalty
    refs2 = [["a dog barks"], ["a cat"]]
    got, per = metrics.cider_d(["a dog", "a cat"], refs2, return_per_item=True)
    expected0 = 10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert per[0] == pytest.approx(expected0)


def test_paper_table_averages_match_the_spec():
    cells = paper.TABLE2
    assert len(cells) == 30
    assert np.mean([e.clap2023 for e in cells]) == pytest.approx(0.438, abs=5e-4)
    assert np.mean([e.benchmark for e in cells]) == pytest.approx(0.319, abs=5e-4)
    classification = [e for e in cells if e.metric in ("acc", "mAP", "f1")]
    assert len(classification) == 20
    assert np.mean([e.clap2023 for e in classification]) == pytest.approx(0.501, abs=5e-4)
    wins = sum(e.clap2023 > e.benchmark for e in cells)
    ties = sum(e.clap2023 == e.benchmark for e in cells)
    assert (wins, ties) == (21, 1)


def test_cider_d_matches_the_coco_caption_implementation():
    from pycocoevalcap.cider.cider import Cider  # coco-caption's CIDEr scorer is CIDEr-D (clipping + penalty)

    cands = ["a dog barks loudly in the park", "rain falls", "a man speaks while cars pass by", "birds chirp"]
    refs = [["a dog is barking", "dog barks in a park", "a loud dog", "the dog barks loudly", "barking of a dog"],
            ["rain is falling on a roof", "heavy rain", "rain falls on the ground", "water dripping and rain",
             "it rains"],
            ["a man talks as traffic passes", "cars pass by and a man speaks", "a person speaking near a road",
             "traffic and speech", "a man is speaking"],
            ["birds are chirping", "many birds sing", "a bird chirps in the trees", "chirping birds",
             "birds chirp while wind blows"]]
    gts = {i: [" ".join(metrics.tokenize_caption(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(metrics.tokenize_caption(c))] for i, c in enumerate(cands)}
    expected, expected_items = Cider().compute_score(gts, res)
    got, items = metrics.cider_d(cands, refs, return_per_item=True)
    assert got == pytest.approx(float(expected), abs=1e-9)
    assert items == pytest.approx(list(expected_items), abs=1e-9)
