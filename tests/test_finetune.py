"""Fine-tuning (clap_jax.finetune): 5-fold ESC-50-layout run with the report, exact resume, LLRD, mixup."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eval_fixtures import Writer

CATS = ["dog", "rain", "siren"]
AUG = {"mixup.alpha": 0.4, "specaug": True}   # both augmentations on (one compiled step shared by the tests)


def _tiny_weights(path):
    from clap_jax.convert import save_checkpoint
    from clap_jax.models import registry

    cfg = registry.model_config("msclap-2023-tiny")
    cfg.audio.sample_rate, cfg.audio.duration, cfg.audio.spec_size = 16000, 0.5, 128
    cfg.audio.depths, cfg.audio.num_heads = (1, 1), (1, 2)      # two stages: a patch merging, fast to compile
    cfg.audio.specaug_time_width, cfg.audio.specaug_freq_width = 4, 4   # stripes for 25-frame clips (msclap's 64
    #                                                                       frames would blank whole clips)
    cfg.text.n_layer = 1                                       # the text tower only serves the zero-shot side
    variables = jax.device_get(registry.init_variables(cfg, 0))
    # bn0's running statistics as a pretrained model has them (those of its input, log-mel dB), not the
    # initial 0 / 1: fine-tuning from 0 / 1 for a few steps leaves training (batch statistics) and test (running)
    # inputs far apart
    model = registry.build_model(cfg)
    t = np.arange(8000) / 16000
    wav = np.stack([0.2 * np.sin(2 * np.pi * f * t) for f in (200, 230, 260, 400, 800)]).astype(np.float32)
    mel = np.asarray(model.apply(variables, jnp.asarray(wav), method=lambda m, w: m.audio_encoder.base.log_mel(w)))
    bn = variables["batch_stats"]["audio_encoder"]["base"]["bn0"]
    bn["mean"], bn["var"] = mel.mean((0, 1)).astype(np.float32), mel.var((0, 1)).astype(np.float32)
    save_checkpoint(str(path), variables, cfg)
    return str(path)


def _esc50(root, per_fold=2):
    """ESC-50's layout (meta/esc50.csv + audio/), 5 folds x `per_fold` clips per class, one tone per class."""
    w = Writer(root)
    rows = []
    for fold in range(1, 6):
        for k in range(per_fold):
            for target, cat in enumerate(CATS):
                fname = f"{fold}-{1000 + 10 * k + target}-A-{target}.wav"
                rows.append([fname, fold, target, cat, "False", 1000 + k, "A"])
                w.wav(f"ESC-50-master/audio/{fname}", [w.tone("esc50", cat) * (1 + 0.02 * k)], sr=16000, seconds=0.5)
    w.csv("ESC-50-master/meta/esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
          rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    _esc50(root / "data")
    return root, _tiny_weights(root / "weights")


def _config(root, weights, workdir, **kw):
    from clap_jax.finetune.config import defaults

    c = defaults()
    c.weights, c.task, c.data_root, c.workdir = weights, "esc50", str(root / "data"), str(workdir)
    c.batch_size, c.eval_batch_size, c.steps = 8, 8, 16
    c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = 1e-2, 0, 0.0
    c.ckpt.every_steps, c.log.every_steps, c.workers = 2, 2, 1
    for k, v in kw.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def test_five_folds_report_and_per_fold_accuracy(setup):
    from clap_jax.finetune.run import run

    root, weights = setup
    out = run(_config(root, weights, root / "run5", **AUG))
    entry = out["results"]["tasks"]["esc50"]
    per_fold = entry["metrics"]["acc_per_fold"]
    assert sorted(per_fold) == ["1", "2", "3", "4", "5"]           # ESC-50's own folds, each held out once
    assert [f["n_test"] for f in out["folds"]] == [6] * 5 and all(f["n_train"] == 24 for f in out["folds"])
    assert entry["metrics"]["acc"] == pytest.approx(np.mean(list(per_fold.values())))
    assert entry["metrics"]["acc"] > 0.5                             # it learned the tones (chance: 1/3)
    assert entry["settings"]["split"].startswith("the dataset's 5 folds")
    report = json.loads(open(out["report"]["json"]).read())
    names = [r["name"] for r in report["runs"]]
    assert names == ["zero-shot", "fine-tuned"]                      # beside zero-shot, in the eval report format
    assert "esc50" in report["runs"][0]["tasks"]
    md = open(out["report"]["markdown"]).read()
    assert "fine-tuned" in md and "zero-shot" in md
    assert f"{entry['metrics']['acc']:.3f}" in md
    print("per-fold accuracy", per_fold, "zero-shot", report["runs"][0]["tasks"]["esc50"]["metrics"]["acc"])
    # a rerun finds every fold done and only rewrites the report
    again = run(_config(root, weights, root / "run5", **AUG))
    assert [f["resumed_from"] for f in again["folds"]] == ["done"] * 5
    assert again["results"]["tasks"]["esc50"]["metrics"]["acc"] == entry["metrics"]["acc"]


class _Killed(Exception):
    pass


def test_resume_is_bit_exact(setup):
    from clap_jax.finetune.run import final_params, run

    root, weights = setup
    kw = {"only_folds": ("2",), "zero_shot": False, **AUG}
    whole = run(_config(root, weights, root / "whole", **kw))
    assert whole["folds"][0]["resumed_from"] is None

    def kill(fold, step):
        if step == 4:   # "killed" right after the step-4 checkpoint is on disk
            raise _Killed()
    with pytest.raises(_Killed):
        run(_config(root, weights, root / "killed", **kw), on_checkpoint=kill)
    again = run(_config(root, weights, root / "killed", **kw))
    assert again["folds"][0]["resumed_from"] == 4                    # continued, not restarted
    a, b = final_params(_config(root, weights, root / "whole", **kw), "2"), \
        final_params(_config(root, weights, root / "killed", **kw), "2")
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))
    assert again["folds"][0]["acc"] == whole["folds"][0]["acc"]


def test_llrd_multipliers_and_updates():
    from clap_jax.finetune.model import Classifier, layer_depths, llrd_multipliers, make_optimizer
    from clap_jax.finetune.config import defaults
    from clap_jax.models import registry

    cfg = registry.model_config("msclap-2023-tiny")          # HTSAT depths (1, 2, 1, 1): 5 blocks
    cfg.audio.sample_rate, cfg.audio.duration, cfg.audio.spec_size = 16000, 0.5, 128
    model = Classifier(cfg, 3)
    params = jax.eval_shape(lambda r: model.init({"params": r}, jnp.zeros((1, 8000))), jax.random.PRNGKey(0))["params"]
    depths, top = layer_depths(params)
    base = depths["clap"]["audio_encoder"]["base"]
    # 5 blocks + 3 patch mergings (each ends its stage, after its blocks) = 8 ranks; the rest at 9; the head at 10
    assert top == 10
    assert base["patch_embed"]["proj"]["kernel"] == 0
    assert base["layers_0"]["blocks_0"]["attn"]["qkv"]["kernel"] == 1
    assert base["layers_0"]["downsample"]["reduction"]["kernel"] == 2
    assert base["layers_1"]["blocks_0"]["attn"]["qkv"]["kernel"] == 3
    assert base["layers_1"]["blocks_1"]["attn"]["qkv"]["kernel"] == 4
    assert base["layers_3"]["blocks_0"]["attn"]["qkv"]["kernel"] == 8
    assert base["norm"]["scale"] == 9 and depths["clap"]["audio_encoder"]["projection"]["linear1"]["kernel"] == 9
    assert depths["head"]["kernel"] == 10
    mults = llrd_multipliers(params, 0.5)
    assert mults["head"]["kernel"] == 1.0
    assert mults["clap"]["audio_encoder"]["base"]["patch_embed"]["proj"]["kernel"] == 0.5 ** 10
    # the optimizer applies them: Adam's first update is lr * sign(g) (bias-corrected), times the multiplier
    oc = defaults().optim
    oc.lr, oc.warmup_steps, oc.weight_decay, oc.grad_clip_norm, oc.llrd = 1e-2, 0, 0.0, 0.0, 0.5
    p = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), params)
    tx, _ = make_optimizer(oc, p, 100)
    g = jax.tree.map(lambda x: -np.ones_like(x), p)
    upd, _ = jax.jit(tx.update)(g, jax.jit(tx.init)(p), p)
    flat_u = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(upd)}
    flat_m = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mults)}
    for k, u in flat_u.items():
        np.testing.assert_allclose(np.asarray(u), 1e-2 * flat_m[k], rtol=1e-4, err_msg=k)
    oc.llrd = 1.0   # off: every layer at the full rate
    tx, _ = make_optimizer(oc, p, 100)
    upd, _ = jax.jit(tx.update)(g, jax.jit(tx.init)(p), p)
    assert all(np.allclose(np.asarray(u), 1e-2, rtol=1e-4) for u in jax.tree.leaves(upd))


def test_mixup_mixes_inputs_and_targets_alike():
    from clap_jax.finetune.model import mixup

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 50)), jnp.float32)
    y = jax.nn.one_hot(jnp.arange(8) % 3, 3)
    xm, ym, lam, perm = mixup(jax.random.PRNGKey(1), x, y, alpha=0.4)
    lam, perm = float(lam), np.asarray(perm)
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(8)) and (perm != np.arange(8)).any()
    np.testing.assert_allclose(np.asarray(xm), lam * np.asarray(x) + (1 - lam) * np.asarray(x)[perm], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ym), lam * np.asarray(y) + (1 - lam) * np.asarray(y)[perm], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ym).sum(1), 1.0, atol=1e-6)       # still distributions
    # lam ~ Beta(alpha, alpha): its mean over many draws is 1/2 and small alpha pushes it to the ends
    lams = np.asarray([mixup(jax.random.PRNGKey(i), x, y, 0.2)[2] for i in range(200)])
    assert abs(lams.mean() - 0.5) < 0.08 and np.mean((lams < 0.1) | (lams > 0.9)) > 0.4
    # prob=0: no batch is mixed
    xm0, ym0, lam0, _ = mixup(jax.random.PRNGKey(1), x, y, 0.4, prob=0.0)
    assert float(lam0) == 1.0 and np.array_equal(np.asarray(xm0), np.asarray(x))


def test_bad_config_names_the_field(setup):
    from clap_jax.errors import ConfigError
    from clap_jax.finetune import config as config_lib
    from clap_jax.finetune.run import run

    root, weights = setup
    with pytest.raises(ConfigError, match="optim.llrd"):
        run(_config(root, weights, root / "bad", **{"optim.llrd": 1.5}))
    c = config_lib.defaults()
    with pytest.raises(ConfigError, match="did you mean optim.llrd"):
        config_lib.set_field(c, "optim.llr=0.5")
    config_lib.set_field(c, "mixup.alpha=0.3")
    assert c.mixup.alpha == 0.3
    from clap_jax.errors import run_cli
    from clap_jax.finetune.__main__ import main

    assert run_cli(main, ["--task", "esc50", "--data-root", str(root / "data")]) == 2   # no --weights
    assert run_cli(main, ["--weights", weights, "--data-root", str(root / "data"), "--task", "nope",
                          "--workdir", str(root / "nope")]) == 2
