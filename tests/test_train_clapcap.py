"""Caption training (objective 'prefix_lm'): the answer-token loss against a hand computation, the objective seam,
initialisation of the captioner from CLAP weights, and a tiny captioner trained on the built-in synthetic data
(GPT-2 tokens made by the data pipeline) that lowers its held-out caption loss and resumes bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clap_jax.errors import ConfigError
from clap_jax.train import objective

from _train_helpers import builtin_data, load_config, train_and_check_resume


def test_answer_token_loss_ignores_prompt_and_padding_by_hand():
    rng = np.random.default_rng(0)
    b, p, length, v = 3, 4, 6, 11
    logits = rng.standard_normal((b, p + length, v)).astype(np.float32) * 3
    ids = rng.integers(1, v, (b, length)).astype(np.int32)
    # row 0: prompt of 2 tokens, answer of 3, padding; row 1: all answer; row 2: prompt only up to padding
    loss_mask = np.array([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0]], np.int32)
    nll, count = 0.0, 0
    for i in range(b):
        for j in range(length):
            if loss_mask[i, j]:
                row = logits[i, p - 1 + j].astype(np.float64)
                logz = np.log(np.exp(row - row.max()).sum()) + row.max()
                nll += logz - row[ids[i, j]]
                count += 1
    loss, m = objective.prefix_lm_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(loss_mask))
    np.testing.assert_allclose(float(loss), nll / count, rtol=1e-5)
    assert float(m["tokens"]) == count == 10
    # changing a logit that predicts a prompt or padding token changes nothing; one that predicts an answer does
    for (i, j), changes in (((0, 1), False), ((0, 5), False), ((2, 4), False), ((0, 2), True)):
        bumped = logits.copy()
        bumped[i, p - 1 + j] += rng.standard_normal(v).astype(np.float32) * 5
        l2, _ = objective.prefix_lm_loss(jnp.asarray(bumped), jnp.asarray(ids), jnp.asarray(loss_mask))
        assert (abs(float(l2) - float(loss)) > 1e-4) == changes, (i, j)
    # micro-batches divided by the whole batch's token count add up to the whole batch's loss
    parts = [objective.prefix_lm_loss(jnp.asarray(logits[s]), jnp.asarray(ids[s]), jnp.asarray(loss_mask[s]),
                                      denominator=jnp.float32(count))[0] for s in (slice(0, 1), slice(1, 3))]
    np.testing.assert_allclose(float(sum(parts)), float(loss), rtol=1e-6)


def test_objective_comes_from_the_family_or_the_config():
    cap = load_config("clapcap", "tiny")
    assert objective.name_of(cap) == "prefix_lm" and objective.of(cap).batch_keys[-1] == "loss_mask"
    clap = load_config("tiny")
    assert objective.name_of(clap) == "contrastive"
    assert objective.of(clap).batch_keys == ("audio", "input_ids", "attention_mask")
    # msclap's defaults: audio encoder and GPT-2 frozen, the mapper trained
    assert cap.optim.towers.clap.freeze and cap.optim.towers.gpt.freeze and not cap.optim.towers.clap_project.freeze
    from clap_jax.train import config as config_lib

    bad = load_config("clapcap", "tiny")
    bad.objective = "masked_lm"
    with pytest.raises(ConfigError, match="objective.*masked_lm"):
        config_lib.validate_config(bad)


def test_captioner_initialises_from_clap_weights(tmp_path):
    """CLAP weights (a clap_jax checkpoint directory and msclap's .pth layout) give the captioner its audio encoder
    (config.init.audio_encoder) and GPT-2 (config.init.text_decoder): CLAP's towers, copied exactly."""
    from clap_jax.convert import checkpoint as ckpt
    from clap_jax.convert import msclap as convert_msclap
    from clap_jax.models import registry
    from clap_jax.train import sharding as shd
    from clap_jax.train import state as state_lib

    cfg = load_config("clapcap", "tiny")
    clap_cfg = registry.model_config("msclap-2023-tiny")
    clap_cfg.audio, clap_cfg.text, clap_cfg.d_proj = cfg.model.audio, cfg.model.text, cfg.model.d_proj
    clap_vars = registry.init_variables(clap_cfg, 7)
    ckpt.save_checkpoint(str(tmp_path / "clap_ckpt"), clap_vars, clap_cfg)
    convert_msclap.save_msclap(clap_vars, clap_cfg, str(tmp_path / "clap.pth"))

    mesh = shd.make_mesh(cfg.mesh)
    model = state_lib.make_model(cfg)
    _, _, init_fn, ab, sh = state_lib.abstract_setup(model, cfg, mesh)
    fresh = jax.jit(init_fn, out_shardings=sh)(jax.random.PRNGKey(0))
    for src in (str(tmp_path / "clap_ckpt"), str(tmp_path / "clap.pth")):
        c = load_config("clapcap", f"tiny,clap={src},text_from={src}")
        state = state_lib.load_initial_weights(c, fresh, ab, sh)
        for coll in ("params", "batch_stats", "constants"):
            for a, b in zip(jax.tree.leaves(state[coll]["clap"]), jax.tree.leaves(clap_vars[coll]["audio_encoder"])):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-7)
        for a, b in zip(jax.tree.leaves(state["params"]["gpt"]["transformer"]),
                        jax.tree.leaves(clap_vars["params"]["caption_encoder"]["base"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # the mapper keeps its fresh initialisation
        for a, b in zip(jax.tree.leaves(state["params"]["clap_project"]),
                        jax.tree.leaves(fresh["params"]["clap_project"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tiny_captioner_on_builtin_data_lowers_heldout_loss_and_resumes_bit_exact(tmp_path):
    from clap_jax.train import data as data_lib
    from clap_jax.train import sharding as shd
    from clap_jax.train import state as state_lib
    from clap_jax.train import train

    data = builtin_data(tmp_path, sample_rate=16000, num_train=64, num_eval=16)
    args = f"tiny,seconds=0.5,dirs={data}/tfrecords,train_gpt,text_len=28,ckpt_every=2,lr=3e-3"

    def cfg(steps, extra=""):
        c = load_config("clapcap", f"{args},steps={steps}{extra}")
        c.optim.schedule = "constant"      # one program for every run length (shared compilation cache)
        return c

    c = cfg(4)
    mesh = shd.make_mesh(c.mesh)
    # captions as msclap tokenises them for GPT-2: text + ' <|endoftext|>', '!' (0) padding
    batch = next(data_lib.make_data_iterator(c, mesh))
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
    n = mask.sum(1)
    assert (ids[np.arange(len(n)), n - 1] == 50256).all() and (ids[np.arange(len(n)), n - 2] == 220).all()
    assert (ids[mask == 0] == 0).all()

    heldout = data_lib.heldout_batches(c, mesh, 2)
    model = state_lib.make_model(c)
    score = objective.heldout_eval_fn(model, c, heldout)

    # resume: 4 steps in one go == 2 steps, stop, then 2 more from the step-2 checkpoint
    ref = train_and_check_resume(cfg, tmp_path, collections=None)
    # frozen audio encoder: unchanged by training; the mapper and GPT-2 moved
    v0 = jax.jit(state_lib.make_init_fn(model, state_lib.make_optimizer_from(c, ref["state"]["params"])[0], c))(
        jax.random.PRNGKey(c.seed))
    for a, b in zip(jax.tree.leaves(ref["state"]["params"]["clap"]), jax.tree.leaves(v0["params"]["clap"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(ref["state"]["params"]["clap_project"]["prefix_const"]),
                              np.asarray(v0["params"]["clap_project"]["prefix_const"]))

    # a longer run (continuing "a") lowers the held-out caption loss
    variables = lambda st: {k: st[k] for k in ("params", "batch_stats", "constants")}  # noqa: E731
    before = score(variables(v0), 0)
    long = train.train_and_evaluate(cfg(STEPS, ",ckpt_every=0"), str(tmp_path / "a"))
    after = score(variables(long["state"]), STEPS)
    print("held-out caption loss", before, "->", after)
    assert after["heldout_loss"] < 0.5 * before["heldout_loss"]
    assert after["heldout_token_acc"] > before["heldout_token_acc"] + 0.2


STEPS = 100


def test_prefix_lm_gradient_accumulation_is_exact():
    """Micro-batches (optim.grad_accum_steps = 2) give the whole batch's loss and gradient: each micro-batch's
    token losses are divided by the whole batch's answer-token count."""
    from clap_jax.train import state as state_lib

    c = load_config("clapcap", "tiny,seconds=0.25,train_gpt,text_len=8,batch=4")
    model = state_lib.make_model(c)
    variables = jax.jit(lambda r: model.init({"params": r}, *state_lib._dummy_inputs(c), train=False))(
        jax.random.PRNGKey(0))
    from clap_jax.models import config as model_config
    from clap_jax.train.random_batches import RandomBatches

    it = RandomBatches(batch_size=4, num_samples=model_config.clip_samples(c.model), text_len=8, num_classes=8)
    batch = objective.of(c).prepare({k: jnp.asarray(v) for k, v in next(it).items()})
    # rows of different answer lengths, so that a per-micro-batch mean would differ from the batch mean
    batch["loss_mask"] = batch["loss_mask"].at[0, 3:].set(0).at[3, 1:].set(0)
    args = (variables["params"], variables["batch_stats"], variables["constants"], batch, jax.random.PRNGKey(1))
    (l1, (m1, _)), g1 = jax.jit(objective.of(c).make_grad_fn(model, c, None))(*args)
    c2 = load_config("clapcap", "tiny,seconds=0.25,train_gpt,text_len=8,batch=4")
    c2.optim.grad_accum_steps = 2
    (l2, (m2, _)), g2 = jax.jit(objective.of(c2).make_grad_fn(model, c2, None))(*args)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
    np.testing.assert_allclose(float(m2["token_acc"]), float(m1["token_acc"]), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
    # the frozen audio encoder gets no gradient
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g1["clap"]))
