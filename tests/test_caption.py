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
    """A tiny captioner export (.safetensors) with random weights (a wider spread of logits than the init's)."""
    cfg = registry.model_config("msclap-clapcap-tiny")
    v = jax.device_get(registry.init_variables(cfg, 7))
    v["params"]["gpt"]["transformer"]["wte"]["embedding"] = v["params"]["gpt"]["transformer"]["wte"]["embedding"] * 20
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


@pytest.fixture(scope="module")
def captioned(captioner, audio_files):
    """(CLAP, every beam of every clip) at beam 3, 12 tokens, in batches of 2."""
    clap = CLAP(captioner[0], batch_size=2)
    return clap, clap.generate_caption(audio_files[0], beam_size=3, entry_length=12, return_beams=True)


def test_generate_caption_is_the_models_decoding(captioner, audio_files, captioned):
    path, cfg, v = captioner
    files, _ = audio_files
    clap, beams = captioned
    # the same clips decoded directly: prefix from the model, beam search, msclap's text rule
    model = registry.build_model(cfg)
    wav = clap.preprocess_audio(files)
    prefix = jax.jit(lambda x, w: model.apply(x, w, method=model.prefix))(v, wav)
    out = jax.device_get(clapcap.beam_search(v["params"]["gpt"]["transformer"], prefix, cfg, beam_size=3,
                                             max_steps=12))
    tok = ClapTokenizer()
    for i in range(len(files)):
        want = [tok.decode(out["tokens"][i, j, :out["lengths"][i, j]]).capitalize() for j in range(3)]
        assert [c for c, _ in beams[i]] == want
        np.testing.assert_allclose([s for _, s in beams[i]], out["scores"][i], rtol=1e-5)
    captions = [b[0][0] for b in beams]
    assert len({b[0][1] for b in beams}) == 3, "each clip is decoded from its own prefix (own scores)"
    # batching does not change a clip's caption; the default call returns the best beams' text
    assert clap.generate_caption(files[1:2], beam_size=3, entry_length=12) == captions[1:2]


def test_generate_caption_needs_captioner_weights():
    cfg = registry.model_config("msclap-2023-tiny")
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), registry.variable_shapes(cfg))
    clap = CLAP(variables=zeros, config=cfg)
    with pytest.raises(UserError, match="needs captioner weights"):
        clap.generate_caption([np.zeros(44100, np.float32)], sample_rate=44100)


def test_cli_outputs_and_bad_files(captioner, audio_files, captioned, tmp_path, capsys):
    path, _, _ = captioner
    files, bad = audio_files
    expected = [b[0][0] for b in captioned[1]]
    out_csv = str(tmp_path / "caps.csv")
    rc = caption_main(["--weights", path, "--beam-size", "3", "--max-tokens", "12", "--batch-size", "2",
                       "--output", out_csv, files[0], bad, files[1], files[2]])
    err = capsys.readouterr().err
    assert rc == 1 and "broken.wav" in err and "1 of 4 files could not be read" in err
    assert "captioned 4/4 files" in err   # progress over several batches
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == files and [r["caption"] for r in rows] == expected
    rc = caption_main(["--weights", path, "--beam-size", "3", "--max-tokens", "12", "--batch-size", "2", "--json",
                       "--beams"] + files)
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and [d["caption"] for d in data] == expected
    assert [[(b["caption"], pytest.approx(b["score"], rel=1e-6)) for b in d["beams"]] for d in data] == captioned[1]
    with pytest.raises(UserError, match="ending .json or .csv"):
        caption_main(["--weights", path, "--output", str(tmp_path / "x.txt"), files[0]])


def test_convert_cli_both_ways(captioner, tmp_path):
    """`python -m clap_jax.convert` takes captioner files: to a clap_jax checkpoint and back to .pth + .safetensors."""
    from clap_jax.convert.__main__ import main as convert_main

    path, cfg, v = captioner
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "back.pth")
    assert convert_main(["msclap-to-jax", path, ckpt]) == 0
    assert convert_main(["jax-to-msclap", ckpt, out]) == 0
    twin = str(tmp_path / "back.safetensors")
    assert cv.sniff(out) and cv.sniff(twin)
    first = cv.to_state_dict(v, cfg)
    for p in (out, twin):
        sd = cv.msclap_fmt.read_state_dict(p)
        assert sd.keys() == first.keys()
        for k in sd:
            np.testing.assert_array_equal(sd[k], first[k], err_msg=k)
