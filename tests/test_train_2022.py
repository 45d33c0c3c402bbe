"""configs/clap_2022.py: the recipe's values, and the tiny 2022-family model (CNN14 BatchNorm statistics and all)
training a few steps on the built-in data (BERT tokens made in the data pipeline) on 8 simulated devices and
resuming bit for bit."""
import numpy as np

from _train_helpers import builtin_data, first_batch, load_config, train_and_check_resume


def test_recipe_values():
    c = load_config("clap_2022", "random")
    assert c.model.family == "msclap-2022" and c.model.audio.duration == 5.0 and c.model.text.max_length == 100
    assert c.batch_size == 1024 and c.optim.name == "adam" and c.optim.lr == 1e-3
    assert c.total_steps == 40 * (128_000 // 1024) and c.optim.plateau.accumulation_size == 125


def test_tiny_2022_trains_on_the_builtin_data_with_bert_tokens_and_resumes_bit_exact(tmp_path):
    """The built-in synthetic dataset (at the model's 44.1 kHz), captions tokenized with BERT WordPiece in the data
    pipeline from a vocabulary the test writes; a run stopped at step 2 and restarted equals an uninterrupted one."""
    from msclap2022_oracle import write_vocab

    data = builtin_data(tmp_path, sample_rate=44100)
    words = ("a", "sound", "of", "tone", "and", "-", ",", "high", "low", "pitched", "loud", "quiet", "siren", "on")
    vocab = write_vocab(tmp_path / "vocab", words)
    args = f"tiny,dirs={data}/tfrecords,vocab={vocab},ckpt_every=2"
    cfg = load_config("clap_2022", args + ",steps=4")
    assert cfg.data.kind == "tfrecord" and cfg.data.tokenizer == vocab

    ids = np.asarray(first_batch(cfg)["input_ids"])
    assert ids.shape == (16, 100) and (ids[:, 0] == 5).all()       # [CLS] first ...
    lengths = (ids != 0).sum(axis=1)
    assert (ids[np.arange(16), lengths - 1] == 6).all()            # ... [SEP] last, [PAD] = 0 after it
    assert len(set(ids[ids > 7].tolist())) > 3                     # words of the vocabulary, not all [UNK]

    # an interrupted run (stopped at step 2, then the same command to step 4) equals an uninterrupted one
    ref = train_and_check_resume(lambda steps: load_config("clap_2022", f"{args},steps={steps}"), tmp_path)
    # CNN14's running statistics were trained (moved from the 0 / 1 init) and are checkpointed with the params
    bn0 = ref["state"]["batch_stats"]["audio_encoder"]["base"]["bn0"]
    assert np.abs(np.asarray(bn0["mean"])).min() > 1e-6
