"""Bad `python -m clap_jax.data.preprocess` invocations: one `error:` line naming the file or flag, exit code 2,
no traceback, and nothing written. Each case runs the real entry point in a subprocess (no jax is imported)."""
import json
import os
import subprocess
import sys

import pytest

from data_fixtures import make_manifest_dataset, write_clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 8000


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CLAP_JAX_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "clap_jax.data.preprocess", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _csv(d, text, name="m.csv", mode="w"):
    p = d / name
    (p.write_bytes if mode == "wb" else p.write_text)(text)
    return str(p)


def _other_job_in_out(d):
    """An --out holding the dataset of another manifest; returns the args of a second, different job."""
    from clap_jax.data import preprocess

    a = make_manifest_dataset(str(d / "raw"), 1, 0.1, SR, source="first")
    b = make_manifest_dataset(str(d / "raw"), 1, 0.1, SR, source="second", seed=1)
    preprocess.run([a], str(d / "out"), str(d / "raw"), preprocess.Options(sample_rate=SR), progress=False)
    return ["-m", b, "--root", str(d / "raw"), "--sample-rate", str(SR)]


def _garbage_dataset_json(d):
    (d / "out").mkdir()
    (d / "out" / "dataset.json").write_text("{not json")
    return ["-m", _csv(d, "path,caption\na.wav,x\n"), "--root", str(d)]


# (case, setup(tmp_path) -> args without -o, expected pieces of the message, whether --out may exist afterwards)
CASES = [
    ("missing_manifest", lambda d: ["-m", str(d / "nope.csv")], ["manifest ", "nope.csv: file not found"]),
    ("manifest_is_a_directory", lambda d: ["-m", str(d)], ["manifest ", ": not a file"]),
    ("missing_root", lambda d: ["-m", _csv(d, "path,caption\na.wav,x\n"), "--root", str(d / "no_root")],
     ["--root ", "no_root: no such directory"]),
    ("root_is_a_file", lambda d: ["-m", _csv(d, "path,caption\na.wav,x\n"), "--root", _csv(d, "", "f.txt")],
     ["--root ", "f.txt: not a directory"]),
    ("out_is_a_file", lambda d: ["-m", _csv(d, "path,caption\na.wav,x\n"), "-o", _csv(d, "", "out")],
     ["--out ", "out: is a file, not a directory"]),
    ("header_only_csv", lambda d: ["-m", _csv(d, "path,caption\n")], ["manifest ", "m.csv: no rows"]),
    ("empty_jsonl", lambda d: ["-m", _csv(d, "\n", "m.jsonl")], ["m.jsonl: no rows"]),
    ("no_usable_rows", lambda d: ["-m", _csv(d, "file_path,caption\na.wav,x\nb.wav,y\n")],
     ["m.csv: no usable rows (2 skipped; first: line 2: ", "no audio path"]),
    ("all_rows_invalid_json", lambda d: ["-m", _csv(d, '{"path": "a.wav"\n[1]\n', "m.jsonl")],
     ["m.jsonl: no usable rows", "line 1: malformed manifest row: invalid JSON"]),
    ("not_utf8", lambda d: ["-m", _csv(d, b"path,caption\na.wav,ok\nb.wav,caf\xe9\n", mode="wb")],
     ["manifest ", "m.csv:3: not UTF-8 text", "save the manifest as UTF-8"]),
    ("unclosed_quote", lambda d: ["-m", _csv(d, 'path,caption\na.wav,"' + "x" * 200_000 + "\nb.wav,ok\n")],
     ["m.csv:2: unreadable CSV (field larger than field limit"]),
    ("bad_default_split", lambda d: ["-m", _csv(d, "path,caption\na.wav,x\n"), "--default-split", "../up"],
     ["--default-split '../up': not a plain name"]),
    ("another_jobs_dataset", _other_job_in_out,
     ["--out ", "out already holds a dataset built by another preprocess job (manifests first.jsonl)",
      "--overwrite", "--append"]),
    ("unreadable_dataset_json", _garbage_dataset_json,
     ["out already holds a dataset", "its dataset.json is unreadable", "--overwrite"]),
]


@pytest.mark.parametrize("case,setup,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line(tmp_path, case, setup, expected):
    args = setup(tmp_path)
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out")]
    existed = os.path.exists(tmp_path / "out")
    before = sorted(os.listdir(tmp_path / "out")) if os.path.isdir(tmp_path / "out") else None
    r = _cli(args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])
    # refused before anything was written: no new --out, an existing one unchanged
    if case != "out_is_a_file":
        assert os.path.exists(tmp_path / "out") == existed
        if before is not None:
            assert sorted(os.listdir(tmp_path / "out")) == before


def test_overwrite_and_append_together_is_a_usage_error(tmp_path):
    r = _cli(["-m", _csv(tmp_path, "path,caption\na.wav,x\n"), "-o", str(tmp_path / "o"), "--overwrite",
              "--append"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("argument --append: not allowed with argument --overwrite")
    assert not os.path.exists(tmp_path / "o")


def test_debug_shows_the_traceback(tmp_path):
    # --debug is for reporting a problem: the same error with its traceback
    r = _cli(["-m", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o"), "--debug"], cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "nope.csv: file not found" in r.stderr


def test_the_error_path_does_not_import_jax(tmp_path):
    # keeps these errors instant: the preprocess CLI needs numpy and soundfile, not jax
    code = ("import sys; import clap_jax.data.preprocess; "
            "print(json.dumps(sorted(m for m in ('jax', 'flax', 'grain', 'torch') if m in sys.modules)))")
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", "import json; " + code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_good_invocation_prints_a_summary(tmp_path):
    # the counterpart of the table: the same entry point succeeds and reports skipped rows, not an error
    write_clip(str(tmp_path / "a.wav"), 0.1, SR)
    m = _csv(tmp_path, "path,caption\na.wav,fine\n../x.wav,outside\n")
    r = _cli(["-m", m, "--root", str(tmp_path), "-o", str(tmp_path / "out"), "--sample-rate", str(SR), "--quiet",
              "-j", "1"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote 1 examples" in r.stdout and "skipped 1" in r.stdout and "outside --root" in r.stderr
