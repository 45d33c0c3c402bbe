"""SPICE (Anderson et al. 2016) through its Java scorer, and SPIDEr = (CIDEr-D + SPICE) / 2 — only with a SPICE
that really ran.

SPICE needs Java (8+) and `spice-1.0.jar` with the Stanford CoreNLP 3.6.0 jars in a `lib/` folder beside it
(`stanford-corenlp-3.6.0.jar`, `stanford-corenlp-3.6.0-models.jar`), as the SPICE release and pycocoevalcap's
`get_stanford_models` lay them out. clap_jax downloads nothing. The jar is looked up in this order:
  1. the `jar` argument (CLI: --spice-jar PATH);
  2. the environment variable CLAP_JAX_SPICE_JAR;
  3. ~/.cache/clap_jax/spice/spice-1.0.jar;
  4. pycocoevalcap's copy (pycocoevalcap/spice/spice-1.0.jar), usable once its lib/ holds the CoreNLP jars.
When none can run, `SpiceError` says why (no jar, no Java, the scorer's own error such as missing CoreNLP
classes), and callers report SPICE and SPIDEr as not computed.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile

from clap_jax.errors import UserError

ENV_JAR = "CLAP_JAX_SPICE_JAR"
DEFAULT_JAR = os.path.join("~", ".cache", "clap_jax", "spice", "spice-1.0.jar")


class SpiceError(UserError):
    """SPICE could not be computed; the message says why and what to install."""


def candidate_jars(jar: str | None = None) -> list[str]:
    """Where the SPICE jar is looked for, in order."""
    out = [jar] if jar else []
    if os.environ.get(ENV_JAR):
        out.append(os.environ[ENV_JAR])
    out.append(os.path.expanduser(DEFAULT_JAR))
    try:
        import pycocoevalcap.spice as pcs

        out.append(os.path.join(os.path.dirname(pcs.__file__), "spice-1.0.jar"))
    except ImportError:
        pass
    return out


def find_jar(jar: str | None = None) -> str:
    """The SPICE jar to use: the given one (which must exist), else the first that exists."""
    if jar:
        if not os.path.isfile(jar):
            raise SpiceError(f"{jar}: SPICE jar not found")
        return jar
    for p in candidate_jars():
        if os.path.isfile(p):
            return p
    raise SpiceError("SPICE not available: no spice-1.0.jar found (give --spice-jar PATH, set "
                     f"{ENV_JAR}, or put it at {DEFAULT_JAR} with the Stanford CoreNLP 3.6.0 jars in lib/ beside it)")


def parse_output(results) -> tuple[float, list[float]]:
    """SPICE's `-out` JSON (a list of {"image_id", "scores": {"All": {"f", "pr", "re", ...}, ...}}) -> (mean F,
    per-item F in the file's order). A missing or non-numeric F is NaN for its item and an error for the mean."""
    if not isinstance(results, list) or not results:
        raise SpiceError("SPICE output: expected a non-empty JSON list of per-item results")
    per = []
    for i, item in enumerate(results):
        try:
            f = item["scores"]["All"]["f"]
        except (KeyError, TypeError) as e:
            raise SpiceError(f"SPICE output: item {i} has no scores.All.f ({e!r})") from e
        try:
            per.append(float(f))
        except (TypeError, ValueError):
            per.append(float("nan"))
    if any(math.isnan(x) for x in per):
        raise SpiceError(f"SPICE output: {sum(math.isnan(x) for x in per)} items have no F-score")
    return sum(per) / len(per), per


def spice(candidates: list[str], references: list[list[str]], jar: str | None = None, java: str = "java",
          timeout: float = 3600.0, memory: str = "8G") -> tuple[float, list[float]]:
    """Corpus SPICE F-score and per-item F (as pycocoevalcap's Spice scorer: `-subset -silent`, mean over items).
    Raises SpiceError when it cannot run."""
    if len(candidates) != len(references):
        raise ValueError(f"spice: {len(candidates)} candidates but {len(references)} reference lists")
    jar = find_jar(jar)
    if shutil.which(java) is None:
        raise SpiceError(f"SPICE needs Java: {java!r} is not on PATH")
    with tempfile.TemporaryDirectory(prefix="clap_jax_spice_") as tmp:
        inp, out, cache = (os.path.join(tmp, n) for n in ("input.json", "output.json", "cache"))
        with open(inp, "w") as f:
            json.dump([{"image_id": i, "test": c, "refs": list(r)} for i, (c, r) in
                       enumerate(zip(candidates, references))], f)
        cmd = [java, "-jar", f"-Xmx{memory}", os.path.abspath(jar), inp, "-cache", cache, "-out", out, "-subset",
               "-silent"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(
                os.path.abspath(jar)))
        except subprocess.TimeoutExpired as e:
            raise SpiceError(f"SPICE ({jar}) did not finish within {timeout:.0f} s") from e
        if r.returncode != 0 or not os.path.isfile(out):
            lines = [t.strip() for t in (r.stderr or r.stdout or "").strip().splitlines() if t.strip()]
            first = [t for t in lines if ("Exception" in t or "Error" in t) and not t.startswith("at ")][:1]
            hint = (" (the Stanford CoreNLP 3.6.0 jars are missing from lib/ beside the jar)"
                    if any("edu/stanford/nlp" in t or "edu.stanford.nlp" in t for t in lines) else "")
            raise SpiceError(f"SPICE failed ({jar}, exit {r.returncode}){hint}: "
                             + " | ".join(first or lines[-3:] or ["no output"]))
        with open(out) as f:
            try:
                results = json.load(f)
            except json.JSONDecodeError as e:
                raise SpiceError(f"SPICE wrote unreadable output ({e})") from e
    score, per = parse_output(results)
    if len(per) != len(candidates):
        raise SpiceError(f"SPICE output has {len(per)} items for {len(candidates)} captions")
    return score, per


def spider(cider: float, spice_score: float) -> float:
    """SPIDEr: the mean of CIDEr-D and SPICE (Liu et al. 2017)."""
    return (cider + spice_score) / 2.0
