"""Captioning from user input: CLAP.generate_caption and `python -m clap_jax.caption` on files, against the model's
own decoding of the same clips."""
import csv
import json

import jax
import numpy as np
import pytest
import soundfile as sf

from clap_jax.caption import main as caption_main
from clap_jax.convert import clapcap as cv
from clap_jax.errors import UserError
from clap_jax.inference import CLAP
from clap_jax.models import clapcap, registry
from clap_jax.text.tokenizer import ClapTokenizer


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    """A tiny captioner export (.safetensors) with random weights whose captions differ between clips."""
    cfg = registry.model_config("msclap-clapcap-tiny")
    v = jax.device_get(registry.init_variables(cfg, 7))
    v["params"]["gpt"]["transformer"]["wte"]["embedding"] = v["params"]["gpt"]["transformer"]["wte"]["embedding"] * 20
    v["params"]["clap_project"]["linear"]["kernel"] = v["params"]["clap_project"]["linear"]["kernel"] * 30
    path = str(tmp_path_factory.mktemp("w") / "cap.safetensors")
    cv.save(v, cfg, path)
    return path, cfg, v


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    paths = []
    for i, (sr, sec) in enumerate(((16000, 2.0), (44100, 9.0), (22050, 1.0))):
        p = str(d / f"clip{i}.{'flac' if i == 1 else 'wav'}")
        t = np.arange(int(sr * sec)) / sr
        sf.write(p, (0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t) + 0.05 * rng.standard_normal(t.size))
                 .astype(np.float32), sr)
        paths.append(p)
    bad = str(d / "broken.wav")
    with open(bad, "wb") as f:
        f.write(b"RIFF....not audio")
    return paths, bad


def test_generate_caption_is_the_models_decoding(captioner, audio_files):
    path, cfg, v = captioner
    files, _ = audio_files
    clap = CLAP(path, batch_size=2)
    beams = clap.generate_caption(files, beam_size=3, entry_length=12, return_beams=True)
    # the same clips decoded directly: prefix from the model, beam search, msclap's text rule
    model = registry.build_model(cfg)
    wav = clap.preprocess_audio(files)
    prefix = model.apply(v, wav, method=model.prefix)
    out = jax.device_get(clapcap.beam_search(v["params"]["gpt"]["transformer"], prefix, cfg, beam_size=3,
                                             max_steps=12))
    tok = ClapTokenizer()
    for i in range(len(files)):
        want = [tok.decode(out["tokens"][i, j, :out["lengths"][i, j]]).capitalize() for j in range(3)]
        assert [c for c, _ in beams[i]] == want
        np.testing.assert_allclose([s for _, s in beams[i]], out["scores"][i], rtol=1e-5)
    captions = [b[0][0] for b in beams]
    assert len(set(captions)) > 1, "random weights still give different captions to different clips"
    # batching does not change a clip's caption; the default call returns the best beams' text
    assert clap.generate_caption(files[1:2], beam_size=3, entry_length=12) == captions[1:2]
    # greedy = beam 1
    greedy = clap.generate_caption(files, beam_size=1, entry_length=12)
    assert len(greedy) == 3 and all(isinstance(c, str) and c for c in greedy)


def test_generate_caption_needs_captioner_weights():
    clap = CLAP(config=registry.model_config("msclap-2023-tiny"))
    with pytest.raises(UserError, match="needs captioner weights"):
        clap.generate_caption([np.zeros(44100, np.float32)], sample_rate=44100)


def test_cli_outputs_and_bad_files(captioner, audio_files, tmp_path, capsys):
    path, _, _ = captioner
    files, bad = audio_files
    expected = CLAP(path).generate_caption(files, beam_size=2, entry_length=10)
    out_csv = str(tmp_path / "caps.csv")
    rc = caption_main(["--weights", path, "--beam-size", "2", "--max-tokens", "10", "--batch-size", "2",
                       "--output", out_csv, files[0], bad, files[1], files[2]])
    err = capsys.readouterr().err
    assert rc == 1 and "broken.wav" in err and "1 of 4 files could not be read" in err
    assert "captioned 4/4 files" in err   # progress over several batches
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == files and [r["caption"] for r in rows] == expected
    rc = caption_main(["--weights", path, "--beam-size", "2", "--max-tokens", "10", "--json", "--beams"] + files)
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and [d["caption"] for d in data] == expected
    assert all(len(d["beams"]) == 2 and d["beams"][0]["caption"] == d["caption"] for d in data)
    with pytest.raises(UserError, match="ending .json or .csv"):
        caption_main(["--weights", path, "--output", str(tmp_path / "x.txt"), files[0]])
