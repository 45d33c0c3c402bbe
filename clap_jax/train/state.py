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
from clap_jax.convert.hf_gpt2 import load_hf_gpt2
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
        dst = _tower_path(abstract_params, "audio")
        want = {k: _get(abstract_state[k], dst) for k in colls if _has(abstract_state[k], dst)}
        loaded = _load_tower(ic.audio_encoder, want, "audio", "config.init.audio_encoder", dst)
        params = _put_path(params, dst, loaded["params"])
        for k in ("batch_stats", "constants"):
            if k in loaded:
                state = dict(state, **{k: _put_path(state[k], dst, loaded[k])})
        log.info("init: audio encoder (params, batch_stats, constants) from %s", ic.audio_encoder)
    if ic.get("hf_gpt2"):
        dst = _tower_path(abstract_params, "text")
        text, _ = load_hf_gpt2(ic.hf_gpt2, _text_config(config.model))
        _check_tree("hf_gpt2", text, _get(abstract_params, dst))
        params = _put_path(params, dst, put(text, _get(state_sh["params"], dst)))
        log.info("init: GPT-2 from %s", ic.hf_gpt2)
    if ic.get("text_decoder"):
        dst = _tower_path(abstract_params, "text")
        loaded = _load_tower(ic.text_decoder, {"params": _get(abstract_params, dst)}, "text",
                             "config.init.text_decoder", dst)
        params = _put_path(params, dst, loaded["params"])
        log.info("init: GPT-2 from the text tower / decoder of %s", ic.text_decoder)
    if params is not state["params"]:
        state = dict(state, params=params,
                     opt_state=jax.jit(lambda p: make_optimizer_from(config, abstract_params)[0].init(p),
                                       out_shardings=state_sh["opt_state"])(params))
    return state


# ============================================================================================ towers by model kind
# Where a tower lives in each kind of model: CLAP (audio_encoder, caption_encoder/base) or an audio-prefix language
# model (the captioner, HTSAT-22 multi-task pretraining: clap, gpt/transformer). Weights of either kind initialise
# the same tower of the other.
_TOWER_PATHS = {"audio": (("audio_encoder",), ("clap",)), "text": (("caption_encoder", "base"), ("gpt", "transformer"))}


def _has(tree, path) -> bool:
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return False
        tree = tree[p]
    return True


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _put_path(tree: dict, path: tuple, value) -> dict:
    if len(path) == 1:
        return dict(tree, **{path[0]: value})
    return dict(tree, **{path[0]: _put_path(tree[path[0]], path[1:], value)})


def _tower_path(params, kind: str) -> tuple:
    for path in _TOWER_PATHS[kind]:
        if _has(params, path):
            return path
    raise ConfigError(f"config.init: this model has no {kind} tower to initialise "
                      f"(looked for {', '.join('/'.join(p) for p in _TOWER_PATHS[kind])})")


def fold_prefix_norm_into_projection(audio_params: dict, stats: dict) -> dict:
    """An audio tower trained under a prefix LM with caption.prefix_batch_norm -> the same tower with that norm's
    inference map (x - mean) / sqrt(var + 1e-5) folded into its projection's final layer norm, so that its
    embedding is the one the language model read: standardised per feature, without the common offset that the
    norm removed (the answer loss never pushed it down, and for CLAP's cosine similarities it would dominate)."""
    ln = audio_params["projection"]["layer_norm"]
    inv = jax.lax.rsqrt(stats["var"].astype(jnp.float32) + 1e-5)
    folded = {"scale": (ln["scale"] * inv).astype(ln["scale"].dtype),
              "bias": ((ln["bias"] - stats["mean"]) * inv).astype(ln["bias"].dtype)}
    return dict(audio_params, projection=dict(audio_params["projection"], layer_norm=folded))


def _text_config(model_cfg):
    return model_cfg.text


def _load_tower(path: str, want: dict, kind: str, field: str, dst: tuple) -> dict:
    """{collection: the `kind` tower} of the weights at `path`: a clap_jax training workdir (or its checkpoints
    directory; only that tower is read), a clap_jax checkpoint directory, or a weights file of a registered format
    (msclap CLAP or captioner .pth / .safetensors). Checked against `want` (this model's tower)."""
    import os

    from clap_jax.convert import formats
    from clap_jax.convert import workdir as workdir_lib
    from clap_jax.convert.checkpoint import read_config

    path = str(path).rstrip("/")
    root = path[:-len("/checkpoints")] if path.endswith("/checkpoints") else path
    ckpts = os.path.join(root, workdir_lib.CHECKPOINTS)
    if workdir_lib.is_workdir(root) or (os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json"))
                                        and workdir_lib.latest_step(path) is not None):
        fold = False
        if workdir_lib.is_workdir(root):
            src_cfg = read_config(os.path.join(root, workdir_lib.CONFIG_FILE))
            src = _TOWER_PATHS[kind][1 if "caption" in src_cfg else 0]
            fold = (kind == "audio" and "caption" in src_cfg and src_cfg.caption.get("prefix_batch_norm", False)
                    and _has(want["params"], ("projection", "layer_norm")))
        else:   # a bare checkpoints directory: a model of this one's kind
            src, ckpts = dst, path
        nest = lambda x: {src[0]: x} if len(src) == 1 else {src[0]: {src[1]: x}}  # noqa: E731
        abstract = {k: nest(v) for k, v in want.items()}
        if fold:
            like = want["params"]["projection"]["layer_norm"]["scale"]
            abstract["batch_stats"] = dict(abstract.get("batch_stats", {}), prefix_norm={"mean": like, "var": like})
        got = restore_variables(ckpts, abstract)
        loaded = {k: _get(got[k], src) for k in want}
        if fold:
            loaded["params"] = fold_prefix_norm_into_projection(loaded["params"], got["batch_stats"]["prefix_norm"])
            log.info("init: %s: the batch norm the run applied to the audio embedding (caption.prefix_batch_norm) "
                     "folded into the audio projection's layer norm", path)
    else:
        variables, _ = formats.load_weights(path)
        loaded = {}
        for k in want:
            tree = variables.get(k, {})
            src = next((p for p in _TOWER_PATHS[kind] if _has(tree, p)), None)
            if src is None:
                raise ConfigError(f"{field}: {path} holds no {kind} tower ({k})")
            loaded[k] = _get(tree, src)
        leaves = jax.tree.leaves(want)
        loaded = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, s.dtype), s.sharding), loaded,
                              {k: want[k] for k in loaded}) if leaves and hasattr(leaves[0], "sharding") else loaded
    for k in want:
        _check_tree(f"{field.rsplit('.', 1)[-1]}({k})", loaded[k], want[k])
    return loaded


def initial_variables(config) -> dict:
    """The variables a training run of `config` starts from (its init at config.seed, its init.* weights loaded),
    on one device: the 'before' of a run."""
    config = config.copy_and_resolve_references()
    config.mesh.data, config.mesh.fsdp = jax.device_count(), 1     # the values do not depend on the layout
    mesh = shd.make_mesh(config.mesh)
    model = make_model(config)
    _, _, init_fn, ab, sh = abstract_setup(model, config, mesh)
    state = jax.jit(init_fn, out_shardings=sh)(jax.random.PRNGKey(config.seed))
    state = load_initial_weights(config, state, ab, sh)
    return jax.device_get({k: state[k] for k in ("params", "batch_stats", "constants")})
