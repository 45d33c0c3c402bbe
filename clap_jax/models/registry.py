"""Model families and their named configs: what the `CLAP` class, the trainer, eval and convert build from a config.

A model config names its family (`config.family`, e.g. 'msclap-2023'). A family says how to build the Flax module,
which tokenizer reads its captions, and which named configs it offers ('msclap-2023', 'msclap-2023-tiny', ...).
Weight formats (files a family's weights come in) are registered next to their converters in
`clap_jax.convert.formats`.

Adding a family is adding its module (model code, configs, a `register(Family(...))` call) and naming that module
in `FAMILY_MODULES`; nothing in the trainer, eval or `CLAP` changes.

    from clap_jax.models import registry
    cfg = registry.model_config("msclap-2023")
    model = registry.build_model(cfg)                       # flax module
    variables = registry.init_variables(cfg, seed=0)        # random weights
    shapes = registry.variable_shapes(cfg)                  # ShapeDtypeStructs, nothing computed
    tok = registry.tokenizer(cfg)                           # captions -> (ids, mask) at cfg.text.max_length
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

# Modules that register families when imported (each ends with `register(Family(...))`).
FAMILY_MODULES = ("clap_jax.models.clap", "clap_jax.models.clap2022")
FAMILY_MODULES += ("clap_jax.models.clapcap",)   # the audio captioner (msclap clapcap)
FAMILY_MODULES += ("clap_jax.models.laion",)     # LAION-CLAP (HTSAT + RoBERTa, feature fusion)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    configs: Mapping[str, Callable[[], ml_collections.ConfigDict]]   # named model configs of this family
    # config -> flax module with __call__(wave, ids, mask, train) and encode_audio(wave) / encode_text(ids, mask)
    build: Callable[[ml_collections.ConfigDict], Any]
    tokenizer: Callable[[ml_collections.ConfigDict, str | None], Any]  # (config, vocabulary source) -> tokenizer
    # (config, batch) -> the dummy inputs of module.init: lets shape-only init work for any family
    example_inputs: Callable[[ml_collections.ConfigDict, int], tuple]
    # config -> None, raising ValueError naming the field; None: the msclap-2023 checks (clap_jax.models.config)
    validate: Callable[[ml_collections.ConfigDict], None] | None = None
    # (config, samples per clip) -> analytic FLOPs of one training example (3 x forward + front end), for MFU;
    # None: the msclap-2023 count (clap_jax.train.flops)
    train_flops: Callable[[ml_collections.ConfigDict, int], float] | None = None
    # what its training run optimises by default (clap_jax.train.objective): 'contrastive' (CLAP towers) or
    # 'prefix_lm' (an audio-prefix language model: cross-entropy on the answer tokens)
    objective: str = "contrastive"


_FAMILIES: dict[str, Family] = {}
_CONFIGS: dict[str, tuple[str, Callable[[], ml_collections.ConfigDict]]] = {}
_loaded = False


def register(family: Family) -> Family:
    if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    for name, fn in family.configs.items():
        if name in _CONFIGS and _CONFIGS[name][0] != family.name:
            raise ValueError(f"model config name {name!r} is used by families {_CONFIGS[name][0]!r} and "
                             f"{family.name!r}")
        _CONFIGS[name] = (family.name, fn)
    return family


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in FAMILY_MODULES:
            importlib.import_module(m)


def _unknown(kind: str, name: str, known) -> ValueError:
    near = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ValueError(f"unknown {kind} {name!r} (known: {', '.join(sorted(known))}){hint}")


def families() -> list[str]:
    _load()
    return sorted(_FAMILIES)


def config_names() -> list[str]:
    _load()
    return sorted(_CONFIGS)


def family(name: str) -> Family:
    _load()
    if name not in _FAMILIES:
        raise _unknown("model family", name, _FAMILIES)
    return _FAMILIES[name]


def family_of(config: ml_collections.ConfigDict) -> Family:
    return family(config.get("family", "msclap-2023"))


def model_config(name: str) -> ml_collections.ConfigDict:
    """A fresh copy of the named model config (e.g. 'msclap-2023', 'msclap-2023-tiny')."""
    _load()
    if name not in _CONFIGS:
        raise _unknown("model config", name, _CONFIGS)
    return _CONFIGS[name][1]()


def default_config(family_name: str) -> ml_collections.ConfigDict:
    """The family's own full-size config (its first named config): the defaults a stored config is read over."""
    f = family(family_name)
    return next(iter(f.configs.values()))()


def build_model(config: ml_collections.ConfigDict):
    return family_of(config).build(config)


def tokenizer(config: ml_collections.ConfigDict, source: str | None = None):
    return family_of(config).tokenizer(config, source)


def variable_shapes(config: ml_collections.ConfigDict) -> dict:
    """Shapes and dtypes of every variable (params, batch_stats, constants) of `config`'s model; nothing is
    computed or allocated."""
    model = build_model(config)
    inputs = family_of(config).example_inputs(config, 1)
    return jax.eval_shape(lambda *x: model.init({"params": jax.random.PRNGKey(0)}, *x, train=False), *inputs)


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array | int = 0) -> dict:
    """Random variables {'params', 'batch_stats', 'constants'} for `config`."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    model = build_model(config)
    inputs = [jnp.zeros(s.shape, s.dtype) for s in family_of(config).example_inputs(config, 1)]
    return jax.jit(lambda r: model.init({"params": r}, *inputs, train=False))(rng)
