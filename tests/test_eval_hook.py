"""The trainer's periodic eval: one embedder per run, new weights swapped in, embedded on the training mesh."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import eval_fixtures as fx
from clap_jax.eval.hook import make_eval_fn
from clap_jax.inference import CLAP
from clap_jax.models import config as model_config
from clap_jax.models.registry import init_variables


def _fsdp_sharded(variables, mesh):
    """Every array with a dimension divisible by the mesh size split along it (as FSDP leaves params)."""
    def put(x):
        x = np.asarray(x)
        for d, n in enumerate(x.shape):
            if n % mesh.size == 0:
                spec = [None] * x.ndim
                spec[d] = ("data", "fsdp")
                return jax.device_put(x, NamedSharding(mesh, P(*spec)))
        return jax.device_put(x, NamedSharding(mesh, P()))
    return jax.tree.map(put, variables)


def test_periodic_eval_compiles_once_on_the_training_mesh(tmp_path):
    fx.builtin(fx.Writer(tmp_path))
    cfg = model_config.tiny()
    cfg.audio.duration = 1.0
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
    v0, v1 = (jax.device_get(init_variables(cfg, s)) for s in (0, 1))

    eval_fn = make_eval_fn(str(tmp_path), cfg, tasks="builtin", batch_size=8, workers=1, mesh=mesh)
    r0 = eval_fn(_fsdp_sharded(v0, mesh), 0)
    emb = eval_fn.embedder()
    r1 = eval_fn(_fsdp_sharded(v1, mesh), 2)
    assert eval_fn.embedder() is emb                        # built once
    assert emb._audio_embed_fn._cache_size() == 1            # each tower compiled once for both evals (audio:
    assert emb._text_fn._cache_size() == 1                   # the embedding-only program get_audio_embeddings runs)
    assert r0 != r1                                          # the second eval saw the new weights

    # Same numbers as a fresh single-host embedder with the same weights (replicated on its own mesh).
    fresh = make_eval_fn(str(tmp_path), cfg, tasks="builtin", batch_size=8, workers=1)(v1, 2)
    assert fresh.keys() == r1.keys()
    for k in r1:
        np.testing.assert_allclose(r1[k], fresh[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_clap_on_a_given_mesh_keeps_param_shardings():
    cfg = model_config.tiny()
    cfg.audio.duration = 1.0
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
    v = _fsdp_sharded(jax.device_get(init_variables(cfg, 0)), mesh)
    clap = CLAP(config=cfg, variables=v, mesh=mesh)
    sharded = [x for x in jax.tree.leaves(clap.variables) if not x.sharding.is_fully_replicated]
    assert sharded, "params were replicated instead of kept in their training sharding"
    ref = CLAP(config=cfg, variables=jax.device_get(v))
    t = ["a dog barking", "rain on a roof", "a siren"]
    np.testing.assert_allclose(clap.get_text_embeddings(t), ref.get_text_embeddings(t), rtol=1e-5, atol=1e-6)


def test_tiny_config_is_evaluated_at_its_own_clip_length(tmp_path):
    """configs/tiny.py trains on 1 s clips: the periodic eval and the CLAP class read 1 s, not msclap's 7 s."""
    from _train_helpers import load_config
    from clap_jax.train import train

    fx.builtin(fx.Writer(tmp_path))
    c = load_config("tiny")
    c.eval.data_root = str(tmp_path)
    assert c.model.audio.duration == 1.0
    eval_fn = train.resolve_eval_fn(c)
    assert eval_fn.loader.duration == 1.0 and eval_fn.loader.sample_rate == c.model.audio.sample_rate
    assert eval_fn.loader.num_samples == model_config.clip_samples(c.model) == 44100
    assert CLAP(config=c.model).preprocess_audio(str(tmp_path / "synthetic/clips/s0000.wav")).shape == (1, 44100)


def test_periodic_eval_in_a_training_run_compiles_the_towers_once(tmp_path):
    """The real tiny CLAP trained 4 steps with an eval every 2: three evals (steps 0, 2, 4), one compile per tower,
    and the numbers change as the weights do."""
    from _train_helpers import load_config
    from clap_jax.train import sharding as shd
    from clap_jax.train import train

    fx.builtin(fx.Writer(tmp_path / "data"))
    c = load_config("tiny", "steps=4,ckpt_every=0")
    c.eval.every_steps = 2
    mesh = shd.make_mesh(c.mesh)
    eval_fn = make_eval_fn(str(tmp_path / "data"), c.model, tasks="builtin", batch_size=8, workers=1, mesh=mesh)
    out = train.train_and_evaluate(c, None, eval_fn=eval_fn, mesh=mesh)
    assert [s for s, _ in out["evals"]] == [0, 2, 4]
    emb = eval_fn.embedder()
    assert emb._audio_embed_fn._cache_size() == 1 and emb._text_fn._cache_size() == 1
    assert out["evals"][0][1] != out["evals"][-1][1]
