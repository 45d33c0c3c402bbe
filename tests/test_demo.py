"""clap_jax.eval.demo_report on a fake run directory: curves from a real TensorBoard event file (as the trainer writes
them), eval numbers from a results.json, chance levels, exit status. No training, a few seconds."""
import json
import math
import os

import pytest

from clap_jax.eval import demo_report


def _write_events(workdir, points):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(workdir)
    for step, values in points:
        summ = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        w.add_event(event_pb2.Event(step=step, wall_time=0.0, summary=summ))
    w.close()


def _fake_run(tmp_path):
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "export").mkdir()
    pts = [(s, {"train/loss": 3.4 - s / 100, "train/acc_a2t": s / 1000, "train/acc_t2a": s / 2000})
           for s in range(10, 110, 10)]
    _write_events(str(run / "train"), pts)
    results = {"checkpoint": "x", "tasks": {
        "builtin_sound": {"metrics": {"acc": 0.8625, "n_clips": 400},
                          "settings": {"kind": "single_label", "n_clips": 400, "n_classes": 8}},
        "builtin_pitch": {"metrics": {"acc": 0.5, "n_clips": 400},
                          "settings": {"kind": "single_label", "n_clips": 400, "n_classes": 3}},
        "builtin_retrieval": {"metrics": {"t2a_R@1": 0.05, "t2a_R@10": 0.3, "a2t_R@1": 0.06, "a2t_R@10": 0.35,
                                          "n_clips": 400, "n_captions": 800},
                              "settings": {"kind": "retrieval", "n_clips": 400, "n_classes": 0}}}}
    (run / "eval" / "results.json").write_text(json.dumps(results))
    (run / "export" / "clap_demo.pth").write_bytes(b"x")
    (run / "run.json").write_text(json.dumps({"batch_size": 32, "total_steps": 100}))
    (run / "timings.tsv").write_text("setup\t3\ntrain\t200\ntotal\t300\n")
    return run


def test_report_from_fake_run(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert demo_report.main([str(run)]) == 0
    png, md = run / "report.png", (run / "report.md").read_text()
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = demo_report.summarize(str(run))
    assert s["final_step"] == 100 and s["batch_size"] == 32
    assert s["final_loss"] == pytest.approx((2.6 + 2.5 + 2.4) / 3)  # mean of the last 3 logged points
    assert s["final_acc_a2t"] == pytest.approx(0.09)
    rows = {(r["task"], r["metric"]): r for r in s["eval"]}
    assert rows[("sound", "acc")]["value"] == 0.8625 and rows[("sound", "acc")]["chance"] == 1 / 8
    assert rows[("pitch", "acc")]["chance"] == pytest.approx(1 / 3)
    assert rows[("retrieval t2a", "R@10")]["chance"] == pytest.approx(10 / 400)
    assert rows[("retrieval a2t", "R@1")]["chance"] == pytest.approx(1 - math.comb(798, 1) / math.comb(800, 1))
    assert "| sound (8-way) | acc | 86.2% | 12.5% | 400 |" in md or "| sound (8-way) | acc | 86.3% | 12.5% | 400 |" in md
    assert "clap_demo.pth" in md and "total 5.0 min" in md
    assert "sound (8-way)" in capsys.readouterr().out


def test_log_fallback_and_empty_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert demo_report.main([str(run)]) == 1  # nothing to report
    (run / "train.log").write_text(
        "2026-01-01 00:00:00,000 I step 10/20 | loss 3.0000 acc a2t 0.100 t2a 0.200 | scale 14.2 ...\n"
        "2026-01-01 00:00:05,000 I step 20/20 | loss 2.0000 acc a2t 0.300 t2a 0.400 | scale 14.0 ...\n")
    curves = demo_report.read_curves(str(run))
    assert curves["train/loss"] == [(10, 3.0), (20, 2.0)] and curves["train/acc_t2a"][-1] == (20, 0.4)
    assert demo_report.main([str(run)]) == 0 and os.path.exists(run / "report.png")
