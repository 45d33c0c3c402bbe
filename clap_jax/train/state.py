"""The train state: model, optimizer, and their variables laid out on the mesh before any of them exists.

The state is a dict {step, params, batch_stats, constants, opt_state, nan_streak, nan_total}. `abstract_setup` works
shape-first: it derives every array's shape and sharding without allocating, so that `jax.jit(init_fn,
out_shardings=state_sh)(rng)` creates each array directly in its place on the devices (a model larger than one
device never exists whole). `load_initial_weights` then overwrites parts of a fresh state with pretrained weights.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from clap_jax.convert import msclap as convert_msclap
from clap_jax.errors import ConfigError
from clap_jax.convert.hf_gpt2 import load_hf_gpt2, with_text_tower
from clap_jax.convert.tree import check_tree
from clap_jax.convert.workdir import restore_variables
from clap_jax.models import registry
from clap_jax.train import optim as optim_lib
from clap_jax.train import sharding as shd

log = logging.getLogger("clap_jax.train")


def make_model(config):
    """The flax module of `config.model`'s family (tests replace this function to train a stand-in model)."""
    return registry.build_model(config.model)


def _dummy_inputs(config, batch: int = 1) -> tuple:
    """Zero inputs of the shapes the model family takes, for `model.init` (only their shapes matter)."""
    shapes = registry.family_of(config.model).example_inputs(config.model, batch)
    return tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)


def make_optimizer_from(config, abstract_params):
    """(optax transformation, learning-rate schedule) for params of these shapes."""
    return optim_lib.make_optimizer(config.optim, abstract_params, config.total_steps)


def make_init_fn(model, tx, config) -> Callable[[jax.Array], dict]:
    def init(rng):
        variables = model.init({"params": rng}, *_dummy_inputs(config), train=False)
        params = variables["params"]
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "constants": variables.get("constants", {}),
            "opt_state": tx.init(params),
            "nan_streak": jnp.zeros((), jnp.int32),
            "nan_total": jnp.zeros((), jnp.int32),
        }
    return init


def abstract_setup(model, config, mesh):
    """Shape-first: (tx, schedule, init_fn, abstract_state with shardings, state shardings). Nothing is
    allocated; `jax.jit(init_fn, out_shardings=state_sh)(rng)` then creates every array in place."""
    abstract_params = jax.eval_shape(
        lambda r: model.init({"params": r}, *_dummy_inputs(config), train=False)["params"], jax.random.PRNGKey(0))
    tx, schedule = make_optimizer_from(config, abstract_params)
    init_fn = make_init_fn(model, tx, config)
    abstract_state = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    state_sh = state_shardings(abstract_state, mesh, config)
    abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  abstract_state, state_sh)
    return tx, schedule, init_fn, abstract_state, state_sh


def state_shardings(abstract_state: dict, mesh, config) -> dict:
    """Params by the rules; optimizer state mirrors params; everything else replicated."""
    rep = shd.replicated(mesh)
    p_sh = shd.tree_shardings(abstract_state["params"], mesh, config.sharding.rules, config.sharding.fsdp_min_size)
    try:
        left = shd.check_fsdp_coverage(abstract_state["params"], mesh, config.sharding.rules,
                                       config.sharding.fsdp_min_size,
                                       int(config.sharding.get("max_replicated_mb", 64) * 2 ** 20))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if left:
        log.warning("FSDP leaves %.1f MiB of parameters whole on every chip (no dimension divisible by fsdp=%d)",
                    left / 2 ** 20, mesh.shape["fsdp"])
    out = jax.tree.map(lambda _: rep, abstract_state)
    out["params"] = p_sh
    out["opt_state"] = shd.mirror_shardings(abstract_state["opt_state"], abstract_state["params"], p_sh, mesh)
    return out


# ============================================================================================ pretrained weights

def _check_tree(name: str, loaded: Any, expected: Any) -> None:
    check_tree(loaded, expected, f"config.init.{name}", what="the model")


def load_initial_weights(config, state: dict, abstract_state: dict, state_sh: dict) -> dict:
    """Initialise from pretrained weights (only for a fresh run), in order: clap_jax run dir, msclap .pth,
    audio-encoder-only clap_jax checkpoint, HF GPT-2. Each is validated against the model's parameter tree."""
    ic = config.init
    params = state["params"]
    abstract_params = abstract_state["params"]

    def put(tree, sh):
        return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, np.float32) if np.asarray(x).dtype.kind == "f"
                                                        else np.asarray(x), s), tree, sh)

    colls = ("params", "batch_stats", "constants")
    if ic.get("clap_jax"):
        loaded = restore_variables(ic.clap_jax, {k: abstract_state[k] for k in colls})
        for k in colls:
            _check_tree(f"clap_jax({k})", loaded[k], abstract_state[k])
        params = loaded["params"]
        state = dict(state, batch_stats=loaded["batch_stats"], constants=loaded["constants"])
        log.info("init: params, batch_stats, constants from clap_jax checkpoint %s", ic.clap_jax)
    if ic.get("msclap"):
        variables, _ = convert_msclap.load_msclap_checkpoint(ic.msclap, config.model)
        _check_tree("msclap", variables["params"], abstract_params)
        params = put(variables["params"], state_sh["params"])
        if "batch_stats" in variables:
            _check_tree("msclap(batch_stats)", variables["batch_stats"], abstract_state["batch_stats"])
            state["batch_stats"] = put(variables["batch_stats"], state_sh["batch_stats"])
        if "constants" in variables:
            _check_tree("msclap(constants)", variables["constants"], abstract_state["constants"])
            state["constants"] = put(variables["constants"], state_sh["constants"])
        log.info("init: params, batch_stats, constants from msclap %s", ic.msclap)
    if ic.get("audio_encoder"):
        want = {k: {"audio_encoder": abstract_state[k]["audio_encoder"]} for k in colls
                if "audio_encoder" in abstract_state[k]}
        loaded = restore_variables(ic.audio_encoder, want)
        for k in want:
            _check_tree(f"audio_encoder({k})", loaded[k], want[k])
        params = dict(params, audio_encoder=loaded["params"]["audio_encoder"])
        for k in ("batch_stats", "constants"):
            if k in want:
                state = dict(state, **{k: dict(state[k], audio_encoder=loaded[k]["audio_encoder"])})
        log.info("init: audio encoder (params, batch_stats, constants) from %s", ic.audio_encoder)
    if ic.get("hf_gpt2"):
        text, _ = load_hf_gpt2(ic.hf_gpt2, config.model.text)
        _check_tree("hf_gpt2", text, abstract_params["caption_encoder"]["base"])
        params = with_text_tower(params, put(text, state_sh["params"]["caption_encoder"]["base"]))
        log.info("init: GPT-2 text encoder from %s", ic.hf_gpt2)
    if params is not state["params"]:
        state = dict(state, params=params,
                     opt_state=jax.jit(lambda p: make_optimizer_from(config, abstract_params)[0].init(p),
                                       out_shardings=state_sh["opt_state"])(params))
    return state
