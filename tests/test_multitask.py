"""HTSAT-22 multi-task pretraining data: labelled rows -> prompt/answer records (round trip), token rows whose loss
covers the answer only (checked with the answer-token loss by hand), the per-batch task sampler's mixture, a
resumable mixture iterator, and configs/htsat22.py's task slots."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clap_jax.data import multitask
from clap_jax.errors import UserError

from _train_helpers import assert_clap_init_from, load_config

ROWS = [
    {"id": "a", "path": "wav/a.wav", "captions": ["a dog barks twice", "barking"], "labels": ["dog", "loud"]},
    {"id": "b", "path": "wav/b.wav", "captions": ["rain on a roof"], "labels": ["rain", "quiet"]},
]


def test_prompt_answer_records_round_trip(tmp_path):
    single = multitask.Task("sound", "what sound is this?", "label", 0)
    multi = multitask.Task("tags", "what sound events are in this audio?", "labels", None)
    cap = multitask.Task("captioning", "caption this audio.", "caption", None)
    recs = multitask.to_records(ROWS, single) + multitask.to_records(ROWS, multi) + multitask.to_records(ROWS, cap)
    assert [r["answer"] for r in recs] == ["dog", "rain", "dog, loud", "rain, quiet", "a dog barks twice",
                                           "barking", "rain on a roof"]
    assert all(r["captions"] == [r["answer"]] and r["path"].startswith("wav/") for r in recs)
    assert {r["prompt"] for r in recs if r["task"] == "sound"} == {"what sound is this?"}
    path = str(tmp_path / "records.jsonl")
    multitask.write_records(path, recs)
    assert multitask.read_records(path) == json.loads(json.dumps(recs))
    # bad input names the record
    with pytest.raises(UserError, match=r"manifest:2: no label answer"):
        multitask.to_records([ROWS[0], {"path": "x", "labels": []}], single)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "answer": "a"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: .*'task'"):
        multitask.read_records(str(tmp_path / "bad.jsonl"))
    with pytest.raises(UserError, match="answer format"):
        multitask.Task("x", "p", "labelz")


def test_answer_token_loss_ignores_prompt_and_padding():
    from clap_jax.text.tokenizer import ClapTokenizer
    from clap_jax.train import objective

    tok = ClapTokenizer(max_length=20)
    batch = multitask.encode_batch(tok, ["what sound is this?", "caption this audio."], ["dog", "rain on a roof"], 20)
    ids, mask, loss_mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    prompt_len = len(tok._tok("what sound is this?")["input_ids"])
    assert loss_mask[0, :prompt_len].sum() == 0 and loss_mask[0, prompt_len] == 1
    assert tok.decode(ids[0][loss_mask[0] == 1]) == " dog <|endoftext|>"
    assert tok.decode(ids[1][loss_mask[1] == 1]) == " rain on a roof <|endoftext|>"
    assert ((loss_mask <= mask) & ((mask == 1) | (ids == 0))).all()      # padding: '!' (0), never in the loss

    rng = np.random.default_rng(1)
    p, v = 3, 50257
    logits = rng.standard_normal((2, p + 20, v)).astype(np.float32)
    want, n = 0.0, 0
    for i in range(2):
        for j in np.flatnonzero(loss_mask[i]):
            row = logits[i, p - 1 + j].astype(np.float64)
            want += np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[i, j]]
            n += 1
    got, m = objective.prefix_lm_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(loss_mask))
    assert int(m["tokens"]) == n == int(loss_mask.sum())
    np.testing.assert_allclose(float(got), want / n, rtol=1e-5)


def test_task_sampler_mixture_matches_weights():
    weights = [3.0, 1.0, 1.0, 0.5, 0.0]
    s = multitask.TaskSampler(weights, seed=4)
    draws = np.array([s.task(i) for i in range(20000)])
    freq = np.bincount(draws, minlength=len(weights)) / len(draws)
    np.testing.assert_allclose(freq, np.array(weights) / sum(weights), atol=0.012)
    assert freq[-1] == 0.0                                            # weight 0: never drawn
    assert [s.task(i) for i in range(50)] == [multitask.TaskSampler(weights, seed=4).task(i) for i in range(50)]
    assert [s.task(i) for i in range(50)] != [multitask.TaskSampler(weights, seed=5).task(i) for i in range(50)]
    with pytest.raises(UserError):
        multitask.TaskSampler([0.0, 0.0])


class _Counter:
    def __init__(self, name):
        self.name, self.i = name, 0

    def __next__(self):
        self.i += 1
        return (self.name, self.i)

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def test_mixture_iterator_resumes_exactly():
    mix = multitask.MixtureIterator([_Counter("a"), _Counter("b"), _Counter("c")], [2, 1, 1], seed=0)
    first = [next(mix) for _ in range(30)]
    assert {n for n, _ in first} == {"a", "b", "c"}
    state = json.loads(json.dumps(mix.get_state()))
    rest = [next(mix) for _ in range(30)]
    again = multitask.MixtureIterator([_Counter("a"), _Counter("b"), _Counter("c")], [2, 1, 1], seed=0)
    again.set_state(state)
    assert [next(again) for _ in range(30)] == rest
    # each task's batches come in its own order
    for name in "abc":
        got = [i for n, i in first + rest if n == name]
        assert got == list(range(1, len(got) + 1))


def test_htsat22_config_names_the_task_slots():
    from clap_jax.errors import ConfigError
    from clap_jax.train import config as config_lib
    from clap_jax.train import objective

    c = load_config("htsat22", "tiny")
    names = [t["name"] for t in c.data.tasks]
    assert names == ["sound_events", "vocal_sounds", "scenes", "music_genre", "instruments", "emotion",
                     "keyword_spotting", "counting", "captioning"]
    tasks = [multitask.Task.from_config(t) for t in c.data.tasks]
    assert all(t.prompt and t.weight > 0 and t.dirs == () for t in tasks)
    assert objective.name_of(c) == "prefix_lm" and not c.optim.towers.clap.freeze
    config_lib.validate_config(c, data=False)
    bad = load_config("htsat22", "tiny")
    bad.data.tasks = ({"name": "x", "prompt": "p", "answer": "label", "weight": -1.0},)
    with pytest.raises(ConfigError, match="data.tasks.*weight"):
        config_lib.validate_config(bad, data=False)
    bad = load_config("htsat22", "tiny")
    bad.data.task_mix = "step"
    with pytest.raises(ConfigError, match="data.task_mix.*'step'"):
        config_lib.validate_config(bad, data=False)
    # the embedding's batch norm (the demo and full-size configs) updates its statistics only while the audio
    # encoder trains: with a frozen encoder it is refused before any compute
    full = load_config("htsat22")
    assert full.model.caption.prefix_batch_norm and not full.model.caption.normalize_prefix
    frozen = load_config("htsat22", "tiny")
    frozen.model.caption.prefix_batch_norm = True
    frozen.optim.towers.clap.freeze = True
    with pytest.raises(ConfigError, match="prefix_batch_norm.*audio encoder"):
        config_lib.validate_config(frozen, data=False)


def test_htsat22_tiny_trains_on_a_task_mixture_of_the_builtin_data(tmp_path):
    """Two task slots filled from the built-in data (a single-label task preprocessed from prompt/answer records,
    and captioning on the caption TFRecords): batches carry the task's prompt outside the loss, the mixture's
    position is checkpointed and a run resumes from it."""
    from clap_jax.data import preprocess, synthetic
    from clap_jax.text.tokenizer import ClapTokenizer
    from clap_jax.train import data as data_lib
    from clap_jax.train import sharding as shd
    from clap_jax.train import train

    data = tmp_path / "data"
    synthetic.write(str(data), num_train=32, num_eval=0, seconds=0.5, sample_rate=16000, audio_format="pcm16",
                    progress=False)
    rows = [json.loads(line) for line in open(data / "train.jsonl")]
    sound = multitask.Task("sound_events", "what sound is this?", "label", 0)
    multitask.write_records(str(data / "sound.jsonl"), multitask.to_records(rows, sound))
    preprocess.run([str(data / "sound.jsonl")], str(data / "sound_tfr"), root=str(data),
                   opts=preprocess.Options(sample_rate=16000, audio_format="pcm16", label_captions="never"),
                   progress=False)

    def cfg(steps):
        c = load_config("htsat22", f"tiny,steps={steps},batch=8")
        m = c.model
        m.audio.duration, m.audio.sample_rate, m.audio.mel_sr = 0.5, 16000, 16000
        m.audio.n_fft, m.audio.hop_size, m.audio.fmax = 512, 160, 8000.0
        m.audio.spec_size, m.audio.mel_bins, m.audio.window_size, m.audio.depths = 64, 32, 4, (1, 1, 1, 1)
        tasks = [dict(t) for t in c.data.tasks]
        tasks[0]["dirs"] = (str(data / "sound_tfr"),)
        tasks[0]["prompt"] = sound.prompt
        tasks[-1]["dirs"] = (str(data / "tfrecords"),)
        c.data.tasks = tuple(tasks)
        c.data.kind, c.data.num_workers = "tfrecord", 0
        c.ckpt.every_steps, c.log.every_steps = 2, 1
        c.optim.schedule, c.optim.warmup_steps = "constant", 0
        c.model.caption.prefix_batch_norm = True        # as the demo and full-size configs train
        return c

    c = cfg(3)
    mix = data_lib.make_data_iterator(c, shd.make_mesh(c.mesh))
    assert len(mix.iterators) == 2                       # the slots without data are left out
    tok = ClapTokenizer(max_length=c.model.text.max_length)
    prompts = {"what sound is this?": set(synthetic.SOUNDS), "caption this audio.": None}
    seen = set()
    for _ in range(6):
        b = {k: np.asarray(v) for k, v in next(mix).items()}
        for ids, lm in zip(b["input_ids"], b["loss_mask"]):
            prompt = tok.decode(ids[:np.argmax(lm)]).strip()
            answer = tok.decode(ids[lm == 1]).replace("<|endoftext|>", "").strip()
            assert prompt in prompts and answer
            if prompts[prompt] is not None:
                assert answer in prompts[prompt]
            seen.add(prompt)
    assert seen == set(prompts)
    state = json.loads(json.dumps(mix.get_state()))
    nxt = np.asarray(next(mix)["input_ids"])
    again = data_lib.make_data_iterator(c, shd.make_mesh(c.mesh))
    again.set_state(state)
    np.testing.assert_array_equal(np.asarray(next(again)["input_ids"]), nxt)

    # data.task_mix='example': one pipeline over both slots' directories, each record with its own slot's prompt,
    # every batch mixing the two by their weights (3 : 3); its position resumes too
    cx = cfg(3)
    cx.data.task_mix = "example"
    mixed = data_lib.make_data_iterator(cx, shd.make_mesh(cx.mesh))
    per_batch = []
    for _ in range(6):
        b = {k: np.asarray(v) for k, v in next(mixed).items()}
        rows = [(tok.decode(ids[:np.argmax(lm)]).strip(),
                 tok.decode(ids[lm == 1]).replace("<|endoftext|>", "").strip())
                for ids, lm in zip(b["input_ids"], b["loss_mask"])]
        assert all(p in prompts and a for p, a in rows)
        assert all(a in prompts[p] for p, a in rows if prompts[p] is not None)
        per_batch.append(sum(p == sound.prompt for p, _ in rows))
    assert all(0 < n < 8 for n in per_batch) and 16 <= sum(per_batch) <= 32, per_batch
    state = json.loads(json.dumps(mixed.get_state()))
    nxt = np.asarray(next(mixed)["input_ids"])
    again = data_lib.make_data_iterator(cx, shd.make_mesh(cx.mesh))
    again.set_state(state)
    np.testing.assert_array_equal(np.asarray(next(again)["input_ids"]), nxt)
    from clap_jax.data import pipeline
    with pytest.raises(ValueError, match="1 prompts for 2 data_dirs"):
        pipeline.build_dataset([str(data / "sound_tfr"), str(data / "tfrecords")], per_host_batch_size=8,
                               prompt=["what sound is this?"], sample_rate=16000, duration=0.5)

    first = train.train_and_evaluate(cfg(2), str(tmp_path / "run"))
    assert all(np.isfinite(v) for v in first["losses"].values())
    res = train.train_and_evaluate(cfg(3), str(tmp_path / "run"))
    assert res["start_step"] == 2 and sorted(res["losses"]) == [3] and np.isfinite(res["losses"][3])
    # the audio encoder is trained in this run
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(first["state"]["params"]["clap"]), jax.tree.leaves(res["state"]["params"]["clap"])))

    # the paper's pipeline: CLAP pretraining's audio encoder initialised from this run (config.init.audio_encoder)
    assert_clap_init_from(tmp_path / "run", c.model, res["state"])
