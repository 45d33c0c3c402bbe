# XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python bench/check_sharded_grads.py
"""Real-model check (too slow for the CPU test suite): gradients of the trainer's loss with the real CLAPModel
(tiny size) on 8 devices, data-parallel and FSDP x sharded loss, against one device without a mesh. Prints the
largest relative gradient difference per layout. (The model computes in float32 whatever the input dtype, so the
reference here is single-device float32; tests/test_train_step.py compares with float64 on a stand-in model.)"""
import os
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from _train_helpers import load_config, mesh  # noqa: E402
from clap_jax.models import config as model_config  # noqa: E402
from clap_jax.models.clap import CLAPModel  # noqa: E402
from clap_jax.train import sharding as shd, state as state_lib, step as step_lib  # noqa: E402
from clap_jax.train.random_batches import make_global_batch  # noqa: E402


def main():
    for layout, arg, shape in [("data_parallel", "", (8, 1, 1)), ("fsdp+sharded_loss", "fsdp,sharded_loss", (2, 4, 1))]:
        c = load_config("tiny", arg)
        c.model.text.dropout = 0.0
        c.model.proj_dropout = 0.0
        c.model.audio.drop_path_rate = 0.0
        model = CLAPModel(c.model)
        m = mesh(shape)
        _, _, init_fn, _, sh = state_lib.abstract_setup(model, c, m)
        st = jax.jit(init_fn, out_shardings=sh)(jax.random.PRNGKey(0))
        batch = make_global_batch(0, 0, c.batch_size, model_config.clip_samples(c.model), 77, 4)
        rng = jax.random.PRNGKey(3)
        bsh = NamedSharding(m, P(shd.BATCH_AXES))
        (loss, _), g = jax.jit(step_lib.make_grad_fn(model, c, m, sh["params"]))(
            st["params"], st["batch_stats"], st["constants"], jax.device_put(batch, bsh), rng)
        ref_c = c.copy_and_resolve_references()
        ref_c.loss.kind = "global"
        host = jax.device_get((st["params"], st["batch_stats"], st["constants"]))
        one = jax.devices()[0]
        host, batch1 = jax.device_put((host, batch), one)   # everything on a single device
        (rloss, _), rg = jax.jit(step_lib.make_grad_fn(model, ref_c, None))(*host, batch1, rng)
        worst = max(float(np.abs(np.asarray(a) - np.asarray(b)).max() / (np.abs(np.asarray(b)).max() + 1e-12))
                    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(rg)))
        print(f"{layout}: loss {float(loss):.7f} vs reference {float(rloss):.7f}; "
              f"max relative grad difference {worst:.2e} over {len(jax.tree.leaves(g))} arrays", flush=True)


if __name__ == "__main__":
    main()
