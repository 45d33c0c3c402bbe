"""Bad invocations of the convert, classify and eval CLIs, run as a user would: exit status, one `error:` line that
names the file or argument, no traceback, and nothing deleted that the command did not write."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import eval_fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/clap_jax_errors_pwned",))


@pytest.fixture(scope="module")
def f(tiny_cfg, tmp_path_factory):
    """Every input the table needs, made once: tiny weights in each format, audio, dataset roots."""
    import jax
    import torch

    from clap_jax.convert import msclap as cv
    from clap_jax.models.registry import init_variables
    from clap_jax.convert import save_checkpoint

    d = tmp_path_factory.mktemp("errors")
    variables = jax.device_get(init_variables(tiny_cfg, 1))
    save_checkpoint(str(d / "ckpt"), variables, tiny_cfg)
    cv.save_msclap(variables, tiny_cfg, str(d / "export.pth"))
    sd = cv.to_msclap_state_dict(variables, tiny_cfg)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, str(d / "plain.pth"))  # as msclap's
    sd["caption_encoder.base.ln_f.weight"] = np.full_like(sd["caption_encoder.base.ln_f.weight"], np.nan)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, cv.CONFIG_KEY: json.dumps(
        tiny_cfg.to_dict(), default=list)}, str(d / "nan.pth"))
    torch.save({"model": {"x": torch.zeros(2)}, "payload": _Evil()}, str(d / "evil.pth"))
    (d / "empty").mkdir()
    (d / "mine").mkdir()
    (d / "mine" / "notes.txt").write_text("keep me")
    (d / "foreign.pth").write_bytes(b"not ours")
    sf.write(str(d / "good.wav"), (0.3 * np.sin(np.arange(22050) * 0.05)).astype(np.float32), 22050)
    (d / "bad.wav").write_bytes(b"RIFF\x00\x00not really audio")
    w = fx.Writer(d / "data")
    fx.esc50(w, actions=False)
    fx.sesa(w)
    (d / "data/ESC-50-master/meta/esc50.csv").write_text("a,b\n1,2\n")   # present but unreadable
    return d


def _run(args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    env.pop("CLAP_JAX_DEBUG", None)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=env)


CONVERT, CLASSIFY, EVAL = "clap_jax.convert", "clap_jax.classify", "clap_jax.eval"
LABELS = ["--labels", "dog,rain"]

# (id, argv with {d} for the fixture dir, cwd under {d} or None, exit status, texts the stderr must hold)
ROWS = [
    ("convert-dir-as-pth", [CONVERT, "msclap-to-jax", "{d}/ckpt", "{d}/o1"], None, 2,
     ["ckpt: is a directory; expected a msclap weights file (.pth or .safetensors)", "jax-to-msclap"]),
    ("convert-missing-src", [CONVERT, "msclap-to-jax", "{d}/nope.pth", "{d}/o2"], None, 2, ["nope.pth: no such file"]),
    ("convert-pickled-code", [CONVERT, "msclap-to-jax", "{d}/evil.pth", "{d}/o3"], None, 2,
     ["evil.pth: the file contains pickled Python code", "would run that code", "torch.save({'model': sd}"]),
    ("convert-no-architecture", [CONVERT, "msclap-to-jax", "{d}/plain.pth", "{d}/o4"], None, 2,
     ["plain.pth: GPT-2's head count is not stored", "--n-head N"]),
    ("convert-nan", [CONVERT, "msclap-to-jax", "{d}/nan.pth", "{d}/o5"], None, 2,
     ["nan.pth: 1 weights hold NaN/inf: caption_encoder.base.ln_f.weight (32 NaN)"]),
    ("convert-into-cwd-with-files", [CONVERT, "msclap-to-jax", "{d}/export.pth", "."], "mine", 2,
     [".: directory is not empty and is not a clap_jax checkpoint (it holds notes.txt)", "--overwrite"]),
    ("export-over-foreign-file", [CONVERT, "jax-to-msclap", "{d}/ckpt", "{d}/foreign.pth"], None, 2,
     ["foreign.pth: exists and is not an export written by clap_jax", "--overwrite"]),
    ("export-to-directory", [CONVERT, "jax-to-msclap", "{d}/ckpt", "{d}/empty"], None, 2,
     ["empty: is a directory; give the export's file name"]),
    ("export-from-empty-dir", [CONVERT, "jax-to-msclap", "{d}/empty", "{d}/o6.pth"], None, 2,
     ["empty: a directory without config.json or model_config.json"]),
    ("hf-gpt2-missing", [CONVERT, "hf-gpt2", "{d}/no_gpt2", "{d}/o7"], None, 2, ["no_gpt2: no such directory"]),
    ("classify-labels-file-missing", [CLASSIFY, "--weights", "{d}/ckpt", "--labels-file", "{d}/classes.txt",
                                      "{d}/good.wav"], None, 2, ["--labels-file", "classes.txt: no such file"]),
    ("classify-no-labels", [CLASSIFY, "--weights", "{d}/ckpt", "--labels", " , ", "{d}/good.wav"], None, 2,
     ["--labels: no labels given"]),
    ("classify-weights-missing", [CLASSIFY, "--weights", "{d}/nope.pth", *LABELS, "{d}/good.wav"], None, 2,
     ["nope.pth: no such file or directory"]),
    ("classify-weights-empty-dir", [CLASSIFY, "--weights", "{d}/empty", *LABELS, "{d}/good.wav"], None, 2,
     ["empty: a directory without config.json", "neither a clap_jax checkpoint nor a training workdir"]),
    ("classify-nan-weights", [CLASSIFY, "--weights", "{d}/nan.pth", *LABELS, "{d}/good.wav"], None, 2,
     ["nan.pth: 1 weights hold NaN/inf"]),
    ("eval-no-weights", [EVAL, "--data-root", "{d}/data"], None, 2, ["--weights is required"]),
    ("eval-weights-empty-dir", [EVAL, "--weights", "{d}/empty", "--data-root", "{d}/data"], None, 2,
     ["--weights", "empty: a directory without config.json"]),
    ("eval-data-root-missing", [EVAL, "--weights", "random-hash", "--data-root", "{d}/nodata"], None, 2,
     ["--data-root", "nodata: directory does not exist"]),
]


@pytest.mark.parametrize("argv,cwd,rc,texts", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_invocation_is_one_line(f, argv, cwd, rc, texts):
    before = {p: sorted(os.listdir(f / p)) for p in ("mine", "empty")}
    r = _run([a.format(d=f) for a in argv], cwd=None if cwd is None else str(f / cwd))
    assert r.returncode == rc, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    for t in texts:
        assert t in errors[0], (t, errors[0])
    assert "weights_only=False will likely succeed" not in r.stderr   # torch's advice is not passed on
    assert "not found:" not in r.stdout                              # no download hints for a missing root
    assert {p: sorted(os.listdir(f / p)) for p in ("mine", "empty")} == before   # nothing deleted or added
    assert (f / "mine" / "notes.txt").read_text() == "keep me" and (f / "foreign.pth").read_bytes() == b"not ours"
    assert not os.path.exists("/tmp/clap_jax_errors_pwned")


def test_classify_scores_good_files_and_names_each_bad_one(f):
    r = _run([CLASSIFY, "--weights", str(f / "export.pth"), *LABELS, str(f / "good.wav"), str(f / "bad.wav"),
              str(f / "gone.wav")])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stdout.startswith(f"{f}/good.wav:  ") and len(r.stdout.splitlines()) == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: {f}/bad.wav: cannot decode audio")
    assert errors[1].startswith(f"error: {f}/gone.wav: file not found")
    assert errors[2] == "error: 2 of 3 files could not be read (see above); the others were scored"


def test_eval_exit_status_for_requested_tasks(f):
    base = [EVAL, "--weights", "random-hash", "--data-root", str(f / "data"), "--no-cache", "--no-progress"]
    r = _run(base + ["--tasks", "esc50,sesa,nosuch", "--out", str(f / "eval1")])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "FAILED esc50: " in r.stderr and "esc50.csv: missing column(s)" in r.stderr
    assert "FAILED nosuch: no such task" in r.stderr
    assert "error: 2 requested task(s) failed" in r.stderr
    assert (f / "eval1" / "results.json").is_file()                 # the report still covers what ran
    r = _run(base + ["--tasks", "sesa", "--out", str(f / "eval2")])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("module", [CONVERT, CLASSIFY, EVAL])
def test_help_exits_0(module):
    r = _run([module, "--help"])
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m " + module) and not r.stderr
