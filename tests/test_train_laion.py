"""configs/laion_clap.py: the recipe's values, and the tiny LAION-family model (fusion on) training on
built-in-like data with clips shorter and longer than its clip length (fusion views and RoBERTa BPE tokens made in
the data pipeline) on 8 simulated devices and resuming bit for bit."""
import numpy as np

from _train_helpers import first_batch, load_config, train_and_check_resume


def test_recipe_values():
    c = load_config("laion_clap", "random")
    assert c.model.family == "laion-clap" and c.model.audio.duration == 10.0 and c.model.audio.sample_rate == 48000
    assert c.model.text.max_length == 77 and c.model.d_joint == 512 and not c.model.audio.fusion
    assert c.batch_size == 2304 and c.optim.name == "adam" and c.optim.lr == 1e-4
    assert (c.optim.b1, c.optim.b2) == (0.99, 0.9) and c.optim.schedule == "warmup_cosine"
    assert c.total_steps == 45 * (633_526 // 2304)
    f = load_config("laion_clap", "random,fusion,base,data=audioset")
    assert f.model.audio.fusion and f.model.audio.embed_dim == 128 and f.batch_size == 4608
    assert load_config("laion_clap", "random,data=audiocaps_clotho").batch_size == 768


def test_tiny_laion_trains_on_the_builtin_data_and_resumes_bit_exact(tmp_path):
    """The fused tiny model (its patch embedding carries the fusion branch's parameters and BatchNorms; unfused
    HTSAT training is the msclap family's code path, tested there) on clips of 0.2-2.4 s (its clip is 0.5 s: the
    longer ones take the fusion path, three local crops fused into the resized global view); a run stopped at
    step 2 and restarted equals an uninterrupted one."""
    fusion = True
    from test_laion_fusion_pipeline import write_clips

    data, vocab = write_clips(tmp_path, [0.3, 0.5, 0.8, 1.6, 0.2, 2.4, 0.5, 1.1] * 3)
    args = f"tiny,dirs={data},vocab={vocab},ckpt_every=2" + (",fusion" if fusion else "")
    cfg = load_config("laion_clap", args + ",steps=4")
    assert cfg.data.kind == "tfrecord" and bool(cfg.model.audio.fusion) == fusion

    batch = first_batch(cfg)
    ids = np.asarray(batch["input_ids"])
    assert ids.shape == (16, 77) and (ids[:, 0] == 0).all()          # <s> first ...
    lengths = (ids != 1).sum(axis=1)
    assert (ids[np.arange(16), lengths - 1] == 2).all()              # ... </s> last, <pad> = 1 after it
    assert np.asarray(batch["mel_fusion"]).shape == (16, 4, 51, 64)  # 0.5 s at 48 kHz: 24000 // 480 + 1 frames
    longer = np.asarray(batch["longer"])
    assert longer.any() and not longer.all()                         # a batch mixing short and long clips

    ref = train_and_check_resume(lambda steps: load_config("laion_clap", f"{args},steps={steps}"), tmp_path)
    bn0 = ref["state"]["batch_stats"]["audio_branch"]["bn0"]
    assert np.abs(np.asarray(bn0["mean"])).min() > 1e-6                # bn0's statistics were trained
