"""`python -m clap_jax.eval` runs a LAION-family model (a laion_clap .pt, the family told from the file) with
LAION's zero-shot protocol (its prompt, ESC-50 fold 1 only), and the report shows LAION-CLAP's published
numbers beside ours."""
import json

import jax
import numpy as np

import eval_fixtures as fx
from clap_jax.convert import laion as cv
from clap_jax.eval import paper
from clap_jax.eval.__main__ import main
from clap_jax.models import registry
from laion_oracle import write_bpe


def test_eval_runs_a_laion_checkpoint_with_laion_protocol(tmp_path):
    w = fx.Writer(tmp_path / "data")
    fx.esc50(w, actions=False)                        # 6 clips over folds 1-5: fold 1 holds 2 of them
    cfg = registry.model_config("laion-clap-tiny")
    cv.save_laion(jax.device_get(registry.init_variables(cfg, 0)), cfg, str(tmp_path / "tiny.pt"))
    (tmp_path / "bpe").mkdir()
    write_bpe(tmp_path / "bpe")
    rc = main(["--weights", str(tmp_path / "tiny.pt"), "--tokenizer", str(tmp_path / "bpe"), "--data-root",
               str(tmp_path / "data"), "--tasks", "esc50", "--protocol", "laion", "--out",
               str(tmp_path / "out"), "--no-cache", "--no-progress", "--batch-size", "4"])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    esc = res["tasks"]["esc50"]
    assert esc["metrics"]["n_clips"] == 2 and 0.0 <= esc["metrics"]["acc"] <= 1.0
    assert esc["settings"]["prompt"] == "This is a sound of {label}."
    assert np.isclose(res["logit_scale"], 1 / 0.07, rtol=1e-5)        # exp(logit_scale_a) of a fresh model
    md = (tmp_path / "out" / "report.md").read_text()
    section = md[md.index("## LAION-CLAP's published numbers"):]
    assert "| esc50 | acc | " + f"{esc['metrics']['acc']:.3f}" in section and "0.910" in section


def test_protocol_laion_is_laions_settings_with_the_command_line_over_them(tmp_path):
    from clap_jax.eval.__main__ import build_config, parser

    base = ["--data-root", str(tmp_path), "--weights", "w"]
    assert build_config(parser().parse_args(base + ["--protocol", "laion"])) == paper.LAION_PROTOCOL
    assert build_config(parser().parse_args(base))["prompts"] == {}
    (tmp_path / "c.json").write_text(json.dumps({"prompts": {"us8k": "a {label}"},
                                                 "options": {"dcase17": {"split": "testing"}}}))
    c = build_config(parser().parse_args(base + ["--protocol", "laion", "--config", str(tmp_path / "c.json"),
                                                 "--prompt", "esc50=the {label}"]))
    assert c["prompts"]["esc50"] == "the {label}" and c["prompts"]["us8k"] == "a {label}"
    assert c["prompts"]["fsd50k"] == paper.LAION_PROMPT
    assert c["options"] == {"esc50": {"folds": [1]}, "dcase17": {"split": "testing"}}


def test_clap_class_uses_laion_clip_rules(tmp_path):
    """CLAP(laion .pt) embeds arrays of any length with laion_clap's rules (int16 round trip, repeat-pad with
    zeros, crops drawn like laion's from a RandomState seeded with `seed`)."""
    import jax.numpy as jnp

    from clap_jax import CLAP
    from clap_jax.audio import fusion

    cfg = registry.model_config("laion-clap-tiny")
    variables = jax.device_get(registry.init_variables(cfg, 2))
    cv.save_laion(variables, cfg, str(tmp_path / "tiny.pt"))
    rng = np.random.default_rng(1)
    waves = [(rng.standard_normal(n) * 0.3).astype(np.float32) for n in (100000, 20 * 48000)]
    clap = CLAP(str(tmp_path / "tiny.pt"), seed=5, batch_size=8)
    got = clap.get_audio_embeddings(waves, sample_rate=48000)
    state = np.random.RandomState(5)
    batch = fusion.batch_inputs([fusion.laion_audio_input(w, state) for w in waves])
    model = registry.build_model(cfg)
    want = model.apply(variables, jnp.asarray(batch["waveform"]), method=model.encode_audio)["embedding"]
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-5)

