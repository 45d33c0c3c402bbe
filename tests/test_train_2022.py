"""configs/clap_2022.py: the recipe's values, and the tiny 2022-family model (CNN14 BatchNorm statistics and all)
training a few steps on the built-in data (BERT tokens made in the data pipeline) on 8 simulated devices and
resuming bit for bit."""
import jax
import numpy as np

from clap_jax.train import train

from _train_helpers import load_config


def test_recipe_values():
    c = load_config("clap_2022", "random")
    assert c.model.family == "msclap-2022" and c.model.audio.duration == 5.0 and c.model.text.max_length == 100
    assert c.batch_size == 1024 and c.optim.name == "adam" and c.optim.lr == 1e-3
    assert c.total_steps == 40 * (128_000 // 1024) and c.optim.plateau.accumulation_size == 125


def test_tiny_2022_trains_on_the_builtin_data_with_bert_tokens_and_resumes_bit_exact(tmp_path):
    """The built-in synthetic dataset (at the model's 44.1 kHz), captions tokenized with BERT WordPiece in the data
    pipeline from a vocabulary the test writes; a run stopped at step 2 and restarted equals an uninterrupted one."""
    from clap_jax.data import synthetic
    from clap_jax.train import data as data_lib
    from clap_jax.train import sharding as shd
    from msclap2022_oracle import write_vocab

    data = str(tmp_path / "data")
    synthetic.write(data, num_train=24, num_eval=0, seconds=0.5, sample_rate=44100, audio_format="pcm16",
                    progress=False)
    words = ("a", "sound", "of", "tone", "and", "-", ",", "high", "low", "pitched", "loud", "quiet", "siren", "on")
    vocab = write_vocab(tmp_path / "vocab", words)
    args = f"tiny,dirs={data}/tfrecords,vocab={vocab},ckpt_every=2"
    cfg = load_config("clap_2022", args + ",steps=4")
    assert cfg.data.kind == "tfrecord" and cfg.data.tokenizer == vocab

    it = data_lib.make_data_iterator(cfg, shd.make_mesh(cfg.mesh))
    ids = np.asarray(next(it)["input_ids"])
    assert ids.shape == (16, 100) and (ids[:, 0] == 5).all()       # [CLS] first ...
    lengths = (ids != 0).sum(axis=1)
    assert (ids[np.arange(16), lengths - 1] == 6).all()            # ... [SEP] last, [PAD] = 0 after it
    assert len(set(ids[ids > 7].tolist())) > 3                     # words of the vocabulary, not all [UNK]

    ref = train.train_and_evaluate(cfg, str(tmp_path / "a"))
    losses = ref["losses"]
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(v) for v in losses.values())
    # CNN14's running statistics were trained (moved from the 0 / 1 init) and are checkpointed with the params
    bn0 = ref["state"]["batch_stats"]["audio_encoder"]["base"]["bn0"]
    assert np.abs(np.asarray(bn0["mean"])).min() > 1e-6
    # an interrupted run: stop at step 2, then the same command to step 4 resumes from the step-2 checkpoint
    train.train_and_evaluate(load_config("clap_2022", args + ",steps=2"), str(tmp_path / "b"))
    res = train.train_and_evaluate(load_config("clap_2022", args + ",steps=4"), str(tmp_path / "b"))
    assert res["start_step"] == 2 and sorted(res["losses"]) == [3, 4]
    for s in (3, 4):
        assert res["losses"][s] == losses[s], (s, res["losses"][s], losses[s])
    for a, b in zip(jax.tree.leaves(res["state"]["params"]) + jax.tree.leaves(res["state"]["batch_stats"]),
                    jax.tree.leaves(ref["state"]["params"]) + jax.tree.leaves(ref["state"]["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
