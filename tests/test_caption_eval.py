"""Captioning scores: SPICE's wiring (Java stand-ins for the scorer, and SPICE itself without its CoreNLP jars),
SPICE output parsing, SPIDEr only with SPICE, and the Clotho captioning task through `clap_jax.eval`."""
import json
import os
import subprocess
import textwrap

import jax
import numpy as np
import pytest
import soundfile as sf

from clap_jax.convert import clapcap as cv
from clap_jax.eval import metrics, spice
from clap_jax.eval.runner import evaluate, summary
from clap_jax.inference import CLAP
from clap_jax.models import registry

HERE = os.path.dirname(os.path.abspath(__file__))

# A stand-in for spice-1.0.jar: checks that it is called as pycocoevalcap calls SPICE, then writes one result per
# input item with F = 1 / (item index + 2); exits 3 (and writes nothing) when called otherwise.
STANDIN = textwrap.dedent("""
    import java.nio.file.*; import java.util.*;
    public class Main {
      public static void main(String[] a) throws Exception {
        List<String> args = Arrays.asList(a);
        if (!args.contains("-subset") || !args.contains("-silent") || !args.contains("-cache")
            || args.indexOf("-out") < 0) {
          System.err.println("stand-in: unexpected arguments " + args); System.exit(3);
        }
        String in = new String(Files.readAllBytes(Paths.get(a[0])));
        int n = in.split("\\"image_id\\"", -1).length - 1;
        StringBuilder sb = new StringBuilder("[");
        for (int i = 0; i < n; i++) {
          double f = 1.0 / (i + 2);
          sb.append(i > 0 ? "," : "").append("{\\"image_id\\": " + i + ", \\"scores\\": {\\"All\\": {\\"f\\": " + f
            + ", \\"pr\\": " + f + ", \\"re\\": " + f + "}, \\"Color\\": {\\"f\\": \\"NaN\\"}}}");
        }
        Files.write(Paths.get(a[args.indexOf("-out") + 1]), (sb + "]").getBytes());
      }
    }""")


@pytest.fixture(scope="module")
def standin_jar(tmp_path_factory):
    d = tmp_path_factory.mktemp("spice")
    (d / "Main.java").write_text(STANDIN)
    subprocess.run(["javac", "Main.java"], cwd=d, check=True, capture_output=True)
    (d / "manifest.txt").write_text("Main-Class: Main\n")
    subprocess.run(["jar", "cfm", "standin.jar", "manifest.txt", "Main.class"], cwd=d, check=True, capture_output=True)
    return str(d / "standin.jar")


def test_parse_spice_output_sample():
    with open(os.path.join(HERE, "data", "spice_output_sample.json")) as f:
        score, per = spice.parse_output(json.load(f))
    assert per == [0.4, 0.6] and score == pytest.approx(0.5)
    with pytest.raises(spice.SpiceError, match="no scores.All.f"):
        spice.parse_output([{"image_id": 0, "scores": {"Object": {"f": 0.1}}}])
    with pytest.raises(spice.SpiceError, match="1 items have no F-score"):
        spice.parse_output([{"image_id": 0, "scores": {"All": {"f": "NaN"}}}])


def test_spice_through_java(standin_jar, tmp_path):
    score, per = spice.spice(["a dog", "rain", "a car"], [["a dog barks"], ["rain falls"], ["a car passes"]],
                             jar=standin_jar, memory="256m")
    assert per == pytest.approx([1 / 2, 1 / 3, 1 / 4]) and score == pytest.approx(np.mean([1 / 2, 1 / 3, 1 / 4]))
    # a jar that is not one fails cleanly, with Java's reason
    broken = tmp_path / "broken.jar"
    broken.write_bytes(b"not a jar")
    with pytest.raises(spice.SpiceError, match=r"SPICE failed .*exit 1.*(corrupt|Invalid)"):
        spice.spice(["a"], [["b"]], jar=str(broken), memory="256m")
    with pytest.raises(spice.SpiceError, match="SPICE jar not found"):
        spice.spice(["a"], [["b"]], jar=str(tmp_path / "absent.jar"))


def test_real_spice_jar_without_corenlp_says_so():
    """pycocoevalcap ships spice-1.0.jar but not the Stanford CoreNLP jars it needs: the error names them."""
    import pycocoevalcap.spice as pcs

    jar = os.path.join(os.path.dirname(pcs.__file__), "spice-1.0.jar")
    if os.path.isdir(os.path.join(os.path.dirname(jar), "lib")) and any(
            "corenlp" in n for n in os.listdir(os.path.join(os.path.dirname(jar), "lib"))):
        score, _ = spice.spice(["a dog barks"], [["a dog is barking"]], jar=jar)   # the real scorer works
        assert 0 < score <= 1
        return
    with pytest.raises(spice.SpiceError, match="CoreNLP 3.6.0 jars are missing"):
        spice.spice(["a dog barks"], [["a dog is barking"]], jar=jar, memory="512m")


@pytest.fixture(scope="module")
def clotho_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    d = root / "clotho"
    (d / "clotho_audio_evaluation").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = ["file_name,caption_1,caption_2,caption_3,caption_4,caption_5"]
    for i in range(3):
        name = f"clip{i}.wav"
        sf.write(str(d / "clotho_audio_evaluation" / name), (0.2 * rng.standard_normal(22050 * (i + 1)))
                 .astype(np.float32), 22050)
        rows.append(f"{name}," + ",".join(f"a sound number {i} variant {j}" for j in range(5)))
    (d / "clotho_captions_evaluation.csv").write_text("\n".join(rows) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    cfg = registry.model_config("msclap-clapcap-tiny")
    path = str(tmp_path_factory.mktemp("w") / "cap.safetensors")
    cv.save(jax.device_get(registry.init_variables(cfg, 1)), cfg, path)
    return CLAP(path)


def test_clotho_captioning_task(captioner, clotho_root, standin_jar, tmp_path):
    logs = []
    # no SPICE: CIDEr-D alone, the reason recorded, no SPIDEr
    r = evaluate(captioner, clotho_root, tasks="clotho_captioning",
                 config={"spice_jar": str(tmp_path / "absent.jar")}, log=logs.append)
    e = r["tasks"]["clotho_captioning"]
    assert set(e["metrics"]) == {"CIDEr-D", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L"} \
        and "SPICE jar not found" in e["spice_error"]
    captions = [c["caption"] for c in e["captions"]]
    refs = [[f"a sound number {i} variant {j}" for j in range(5)] for i in range(3)]
    assert e["metrics"]["CIDEr-D"] == pytest.approx(metrics.cider_d(captions, refs))
    assert captions == captioner.generate_caption([c["file"] for c in e["captions"]])
    assert e["settings"]["kind"] == "captioning" and e["settings"]["n_clips"] == 3
    assert any("no SPIDEr" in line for line in logs)
    from clap_jax.eval.report import table_rows, write_report

    row = next(x for x in table_rows([r]) if x["key"] == "clotho_captioning")
    assert row["ours"] == [None] and row["status"] == "SPICE not available"
    # with a SPICE that runs: SPIDEr is the mean of the two
    r = evaluate(captioner, clotho_root, tasks="clotho", config={"spice_jar": standin_jar}, log=logs.append)
    m = r["tasks"]["clotho_captioning"]["metrics"]
    assert m["SPICE"] == pytest.approx(np.mean([1 / 2, 1 / 3, 1 / 4]))
    assert m["SPIDEr"] == pytest.approx((m["CIDEr-D"] + m["SPICE"]) / 2)
    assert summary(r)["clotho_captioning/SPIDEr"] == pytest.approx(m["SPIDEr"])
    assert r["missing"] == [] and r["errors"] == {}
    # the report's paper row (Table 2, Clotho captioning SPIDEr) shows our number
    row = next(x for x in table_rows([r]) if x["key"] == "clotho_captioning")
    assert row["ours"] == [pytest.approx(m["SPIDEr"])] and row["status"] is None
    assert "clotho_captioning" in write_report(r, tmp_path / "report")["markdown"].read_text()
