"""The msclap-2022 family beyond parity: CNN14's BatchNorm in training (torch's rule; global statistics under
the sharded jit, per-device or synchronised under shard_map), format detection, CLAP / classify / convert / eval
with a 2022 file, the BERT vocabulary sources and their errors."""
import json
import os

import jax
import flax.linen as nn
import numpy as np
import pytest
import torch
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clap_jax.convert import formats, load_weights
from clap_jax.convert import msclap2022 as cv
from clap_jax.convert.tree import CheckpointError
from clap_jax.errors import UserError
from clap_jax.models import registry
from clap_jax.models.cnn14 import ConvBlock, TorchBatchNorm
from clap_jax.text.bert_tokenizer import BertWordPieceTokenizer
from conftest import rel_err
from msclap2022_oracle import (build_msclap_2022, msclap_audio_outputs_2022, msclap_text_embeddings_2022,
                               msclap_tokenizer_2022, write_vocab)


@pytest.fixture(scope="module")
def cfg():
    return registry.model_config("msclap-2022-tiny")


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def oracle(cfg):
    return build_msclap_2022(cfg, seed=4)


@pytest.fixture(scope="module")
def msclap_file(oracle, tmp_path_factory):
    """A file as msclap ships it: {'model': state_dict}, no clap_jax config."""
    path = str(tmp_path_factory.mktemp("w") / "CLAP_weights_2022.pth")
    torch.save({"model": oracle.state_dict()}, path)
    return path


# ------------------------------------------------------------------------------------------------------------------
# BatchNorm
# ------------------------------------------------------------------------------------------------------------------
def test_batchnorm_training_step_is_torchs():
    rng = np.random.default_rng(0)
    x = rng.normal(1.5, 2.0, (4, 9, 6, 5)).astype(np.float32)           # NHWC
    mean0, var0 = rng.normal(0, 1, 5).astype(np.float32), rng.uniform(0.5, 2, 5).astype(np.float32)
    scale, bias = rng.normal(1, 0.2, 5).astype(np.float32), rng.normal(0, 0.2, 5).astype(np.float32)
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(scale)); bn.bias.copy_(torch.from_numpy(bias))
        bn.running_mean.copy_(torch.from_numpy(mean0)); bn.running_var.copy_(torch.from_numpy(var0))
        ref = bn.train()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    v = {"params": {"scale": scale, "bias": bias}, "batch_stats": {"mean": mean0, "var": var0}}
    y, upd = TorchBatchNorm().apply(v, x, use_running_average=False, mutable=["batch_stats"])
    assert rel_err(y, ref) < 1e-5
    np.testing.assert_allclose(upd["batch_stats"]["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["var"], bn.running_var.numpy(), rtol=1e-5)   # unbiased update
    # eval mode: the running statistics
    with torch.no_grad():
        ref_eval = bn.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    y_eval = TorchBatchNorm().apply({"params": v["params"], "batch_stats": upd["batch_stats"]}, x)
    assert rel_err(y_eval, ref_eval) < 1e-5


class _BNNet(nn.Module):
    """CNN14's BatchNorm arrangement in small: bn0 over the mel bins, then a conv block (two more BatchNorms)."""
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = TorchBatchNorm(axis_name=self.axis_name, name="bn0")(x, use_running_average=not train)
        return ConvBlock(4, axis_name=self.axis_name, name="conv_block1")(x[..., None], (2, 2), train)


def _cnn_and_vars(cfg):
    del cfg
    model = _BNNet()
    rng = np.random.default_rng(1)
    x = (rng.normal(-20, 6, (8, 16, 8)) * np.linspace(0.5, 1.5, 8)[:, None, None]).astype(np.float32)
    v = jax.device_get(jax.jit(lambda r: model.init({"params": r}, x[:1]))(jax.random.PRNGKey(0)))
    return None, model, v, x


def _train_stats(model, v, wav):
    _, upd = model.apply(v, wav, train=True, mutable=["batch_stats"])
    return upd["batch_stats"]


def test_batch_stats_under_data_parallel_and_fsdp_are_the_global_batchs(cfg):
    """The trainer's jit over a batch split on (data, fsdp) with FSDP-split weights: statistics = one device's."""
    _, model, v, wav = _cnn_and_vars(cfg)
    fn = jax.jit(lambda v, w: _train_stats(model, v, w))
    single = fn(v, wav)
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
    batch_sh = NamedSharding(mesh, P(("data", "fsdp")))
    param_sh = jax.tree.map(lambda x: NamedSharding(mesh, P(*([None] * (x.ndim - 1) + ["fsdp"])))
                            if x.ndim >= 1 and x.shape[-1] % 2 == 0 else NamedSharding(mesh, P()), v)
    sharded = fn(jax.device_put(v, param_sh), jax.device_put(wav, batch_sh))
    assert len(sharded["bn0"]["mean"].sharding.device_set) == 8
    for (p, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(single)[0],
                              jax.tree_util.tree_flatten_with_path(sharded)[0]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=1e-6, err_msg=str(p))
    # and they moved away from the init (a statistic that is never updated would pass the comparison above)
    assert np.abs(np.asarray(single["bn0"]["mean"])).min() > 0.1


def test_batch_stats_in_shard_map_per_device_or_synchronised(cfg):
    _, model, v, wav = _cnn_and_vars(cfg)
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
    fn = jax.jit(lambda v, w: _train_stats(model, v, w))
    per_rows = [fn(v, wav[2 * i: 2 * i + 2]) for i in range(4)]
    global_ = fn(v, wav)

    def run(m):
        def local(w):
            stats = _train_stats(m, v, w)
            return jax.tree.map(lambda x: x[None], stats)
        return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P("data")))(wav)

    per_device = run(model)                                  # axis_name None: each device its own rows
    synced = run(_BNNet(axis_name="data"))                 # synchronised over 'data'
    for i in range(4):
        for x, y in zip(jax.tree.leaves(jax.tree.map(lambda s: s[i], per_device)), jax.tree.leaves(per_rows[i])):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=1e-6)
        for x, y in zip(jax.tree.leaves(jax.tree.map(lambda s: s[i], synced)), jax.tree.leaves(global_)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=1e-6)
    d = np.abs(np.asarray(per_device["bn0"]["mean"][0]) - np.asarray(global_["bn0"]["mean"])).max()
    assert d > 1e-3   # per-device statistics do differ from the global ones on these rows


# ------------------------------------------------------------------------------------------------------------------
# Files: detection, CLAP, CLIs
# ------------------------------------------------------------------------------------------------------------------
def test_msclap_file_is_detected_as_2022_and_needs_the_head_count(cfg, msclap_file, tiny_msclap, tmp_path):
    assert formats.for_file(msclap_file).name == "msclap-2022"
    with pytest.raises(CheckpointError, match="--n-head"):
        load_weights(msclap_file)
    variables, got = load_weights(msclap_file, n_head=2)
    assert got.to_dict() == cfg.to_dict()
    # a clap_jax export names its family; the 2023 format keeps its own files
    out = str(tmp_path / "exp.safetensors")
    cv.save_msclap_2022(variables, got, out)
    assert formats.for_file(out).name == "msclap-2022" and load_weights(out)[1].family == "msclap-2022"
    from clap_jax.models import config as mc

    p23 = str(tmp_path / "CLAP_weights_2023.pth")          # msclap's own 2023 layout: still the 2023 format
    torch.save({"model": tiny_msclap.state_dict()}, p23)
    assert formats.for_file(p23).name == "msclap" and not cv.sniff(p23)
    # a 2023 model is not written in the 2022 layout
    with pytest.raises(CheckpointError, match="2022 layout"):
        cv.save_msclap_2022({}, mc.tiny(), str(tmp_path / "x.pth"))


def test_clap_class_and_classify_cli_with_a_2022_file(cfg, oracle, msclap_file, vocab, tmp_path, capsys):
    import soundfile as sf

    from clap_jax import classify
    from clap_jax.inference import CLAP

    clap = CLAP(msclap_file, cfg, tokenizer=vocab, batch_size=8)
    assert clap.sample_rate == 44100 and clap.clip_samples == 220500
    rng = np.random.default_rng(3)
    t = np.arange(220500) / 44100
    clips = [(0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
             for f in (220, 3000)]
    ours = clap.get_audio_embeddings(clips, sample_rate=44100)
    ref = msclap_audio_outputs_2022(oracle, np.stack(clips))["embedding"]
    assert rel_err(ours, ref) < 1e-4
    texts = ["a dog barks", "this is a sound of rain"]
    assert rel_err(clap.get_text_embeddings(texts),
                   msclap_text_embeddings_2022(oracle, msclap_tokenizer_2022(vocab), texts)) < 1e-4
    paths = []
    for i, c in enumerate(clips):
        paths.append(str(tmp_path / f"c{i}.wav"))
        sf.write(paths[-1], c, 44100, subtype="FLOAT")
    # the CLI: a file stored with its config (msclap's own needs --n-head, which classify does not take)
    exp = str(tmp_path / "clap2022.pth")
    cv.save_msclap_2022(jax.device_get(clap.variables), cfg, exp)
    assert classify.main(["--weights", exp, "--tokenizer", vocab, "--labels", "dog,rain,siren", "--json",
                          *paths]) == 0
    out = json.loads(capsys.readouterr().out)
    probs = clap.classify(paths, ["dog", "rain", "siren"])
    assert [r["file"] for r in out] == paths
    for row, p in zip(out, probs):
        got = {t["label"]: t["prob"] for t in row["top"]}
        np.testing.assert_allclose([got[k] for k in ("dog", "rain", "siren")], p, rtol=1e-4, atol=1e-6)


def test_text_needs_a_vocabulary_audio_does_not(cfg, msclap_file, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from clap_jax.inference import CLAP

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    clap = CLAP(msclap_file, cfg)                               # no vocabulary given, none cached
    assert clap.get_audio_embeddings([np.zeros(44100, np.float32)], sample_rate=44100).shape == (1, cfg.d_proj)
    with pytest.raises(UserError, match="bert-base-uncased"):
        clap.get_text_embeddings(["a dog"])
    # a hub name resolves from the local cache only
    snap = tmp_path / "cache" / "models--bert-base-uncased" / "snapshots" / "abc123"
    write_vocab(snap)
    (tmp_path / "cache" / "models--bert-base-uncased" / "refs").mkdir()
    (tmp_path / "cache" / "models--bert-base-uncased" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "cache"))
    ids, _ = BertWordPieceTokenizer(None)(["a dog"])
    np.testing.assert_array_equal(ids[0, :4], [5, 8, 9, 6])
    ids2, _ = BertWordPieceTokenizer("bert-base-uncased")(["a dog"])
    np.testing.assert_array_equal(ids, ids2)
    with pytest.raises(UserError, match="local Hugging Face cache"):
        BertWordPieceTokenizer("someone/not-cached")(["a"])


def test_tokenizer_inputs_and_errors(vocab, tmp_path):
    tok = BertWordPieceTokenizer(os.path.join(vocab, "vocab.txt"), max_length=8)   # the file itself
    ids, mask = tok(["a dog barks twice a dog barks twice", "Dog"])
    assert ids[0, 0] == 5 and ids[0, -1] == 6 and mask[0].all()     # cut to 8 keeping [CLS] ... [SEP]
    np.testing.assert_array_equal(ids[1, :3], [5, 9, 6])              # lower-cased
    assert mask[1].sum() == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no vocab.txt"):
        BertWordPieceTokenizer(str(tmp_path / "empty"))(["a"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vocab.txt").write_text("hello\nworld\n")
    with pytest.raises(UserError, match=r"lacks \[PAD\]"):
        BertWordPieceTokenizer(str(bad))(["a"])
    with pytest.raises(TypeError):
        BertWordPieceTokenizer(vocab)([3])


def test_convert_cli_round_trip_strict(cfg, msclap_file, tmp_path):
    from clap_jax.convert.__main__ import main

    ck = str(tmp_path / "ck")
    assert main(["msclap-to-jax", msclap_file, ck, "--n-head", "2"]) == 0
    out = str(tmp_path / "back.pth")
    assert main(["jax-to-msclap", ck, out]) == 0
    assert os.path.isfile(str(tmp_path / "back.safetensors"))
    ref = build_msclap_2022(cfg, seed=50)
    res = ref.load_state_dict(torch.load(out, weights_only=True)["model"], strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    orig = torch.load(msclap_file, weights_only=True)["model"]
    for k, x in ref.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(x, orig[k]), k


def test_eval_cli_picks_the_family_from_the_file(cfg, oracle, vocab, tmp_path):
    import eval_fixtures as fx

    from clap_jax.eval.__main__ import main

    fx.builtin(fx.Writer(tmp_path / "data"))
    exp = str(tmp_path / "w2022.pth")
    sd = {k: v.numpy() for k, v in oracle.state_dict().items()}
    cv.save_msclap_2022(cv.from_msclap_state_dict(sd, cfg), cfg, exp)
    rc = main(["--weights", exp, "--tokenizer", vocab, "--data-root", str(tmp_path / "data"), "--tasks", "builtin",
               "--out", str(tmp_path / "out"), "--no-cache", "--no-progress", "--workers", "1", "--batch-size", "8"])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    text = json.dumps(res)
    assert "tones" in text and "captions" in text
    assert '"duration": 5.0' in text.replace(" ", "").replace('"duration":5.0', '"duration": 5.0')


def test_hf_bert_into_the_text_tower(cfg, tmp_path):
    """A HF BertForMaskedLM directory ('bert.' prefix, 'cls.' head, no pooler) -> our BERT = HF's hidden states."""
    from transformers import BertConfig, BertForMaskedLM

    from clap_jax.convert.__main__ import main
    from clap_jax.convert.hf_bert import load_hf_bert
    from clap_jax.models.bert import Bert

    t = cfg.text
    torch.manual_seed(0)
    hf = BertForMaskedLM(BertConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
                                    num_attention_heads=t.num_heads, intermediate_size=t.intermediate_size,
                                    max_position_embeddings=t.max_position_embeddings)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn(p.shape))
    hf.save_pretrained(str(tmp_path / "hf"))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, t.vocab_size, (2, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        ref = hf.bert(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))[0].numpy()
    base = jax.device_get(registry.init_variables(cfg, 0))["params"]["caption_encoder"]["base"]
    params, tcfg = load_hf_bert(str(tmp_path / "hf"), base_params=base)
    assert tcfg.num_layers == t.num_layers and tcfg.hidden_size == t.hidden_size
    hidden, _ = Bert(tcfg).apply({"params": params}, ids, mask)
    keep = mask.astype(bool)
    assert rel_err(np.asarray(hidden)[keep], ref[keep]) < 1e-4
    # the CLI writes a msclap-2022 checkpoint whose text tower is HF's, the rest from --base
    from clap_jax.convert import save_checkpoint

    full = jax.device_get(registry.init_variables(cfg, 0))
    save_checkpoint(str(tmp_path / "base"), full, cfg)
    assert main(["hf-bert", str(tmp_path / "hf"), str(tmp_path / "ck"), "--base", str(tmp_path / "base")]) == 0
    v, c = load_weights(str(tmp_path / "ck"))
    assert c.to_dict() == cfg.to_dict()
    np.testing.assert_array_equal(v["params"]["audio_encoder"]["projection"]["linear1"]["kernel"],
                                  full["params"]["audio_encoder"]["projection"]["linear1"]["kernel"])
    np.testing.assert_array_equal(v["params"]["caption_encoder"]["base"]["embeddings"]["word_embeddings"]["embedding"],
                                  hf.bert.embeddings.word_embeddings.weight.detach().numpy())
    # a wrong size is refused, naming the keys
    t2 = t.copy_and_resolve_references()
    t2.num_layers = t.num_layers + 1
    with pytest.raises(CheckpointError, match=f"encoder.layer.{t.num_layers}"):
        load_hf_bert(str(tmp_path / "hf"), t2, base_params=base)


def test_paper_2022_column():
    from clap_jax.eval import paper, report

    assert len(paper.CLAP2022) == 16
    tasks = {e.task for e in paper.TABLE2}
    assert all(t in tasks for t, _ in paper.CLAP2022)        # every 2022 task is a harness task of the suite
    # where the 2023 table quotes CLAP 2022 as its benchmark, the two agree to the printed precision
    for e in paper.TABLE2:
        # (GTZAN genres: the 2023 table prints 0.250 for the 2022 paper's 0.252)
        if e.benchmark_source == "[3] CLAP 2022" and (e.task, e.metric) in paper.CLAP2022 and e.task != "gtzan_genres":
            assert abs(paper.CLAP2022[(e.task, e.metric)] - e.benchmark) < 1.5e-3, e.task
    assert abs(sum(paper.CLAP2022.values()) / 16 - paper.AVERAGES["clap2022_16_tasks"]["clap2022"]) < 1e-3
    md = report.markdown([{"name": "x", "tasks": {}}])
    assert "| CLAP 2023 (paper) | CLAP 2022 (paper) |" in md and "| 0.939 | 0.826 |" in md
