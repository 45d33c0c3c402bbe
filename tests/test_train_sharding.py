"""Mesh from config, sharding rules, optimizer-state mirroring, config validation naming the field."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from clap_jax.train import config as config_lib
from clap_jax.train import sharding as shd

from _train_helpers import load_config


def _mesh_cfg(**kw):
    c = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
    c.update(kw)
    return c


def test_mesh_shape_fills_minus_one_and_rejects_bad_sizes():
    assert shd.mesh_shape(_mesh_cfg(), 8) == ((8, 1, 1), (1, 1, 1))
    assert shd.mesh_shape(_mesh_cfg(data=2, fsdp=-1), 8) == ((2, 4, 1), (1, 1, 1))
    assert shd.mesh_shape(_mesh_cfg(data=-1, tensor=2, dcn_data=2), 8, num_slices=2) == ((2, 1, 2), (2, 1, 1))
    with pytest.raises(ValueError, match="config.mesh"):
        shd.mesh_shape(_mesh_cfg(data=3), 8)
    with pytest.raises(ValueError, match="config.mesh"):
        shd.mesh_shape(_mesh_cfg(data=-1, fsdp=-1), 8)


def test_make_mesh_has_auto_axes_and_all_devices():
    m = shd.make_mesh(_mesh_cfg(data=2, fsdp=-1))
    assert m.axis_names == ("data", "fsdp", "tensor") and dict(m.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert m.size == jax.device_count()
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)


def test_rules_fsdp_shards_largest_divisible_dim_and_replicates_small():
    m = shd.make_mesh(_mesh_cfg(data=1, fsdp=-1))
    tree = {"audio_encoder": {"kernel": jnp.zeros((12, 64)), "bias": jnp.zeros((64,))},
            "caption_encoder": {"wte": jnp.zeros((50257, 16))}, "logit_scale": jnp.zeros(())}
    sh = shd.tree_shardings(tree, m, [("bias", "replicate"), (".*", "fsdp")], fsdp_min_size=100)
    assert sh["audio_encoder"]["kernel"].spec == P(None, "fsdp")
    assert sh["audio_encoder"]["bias"].spec == P()
    assert sh["caption_encoder"]["wte"].spec == P(None, "fsdp")   # 50257 not divisible by 8
    assert sh["logit_scale"].spec == P()
    sh_rep = shd.tree_shardings(tree, m, [(".*", "replicate")])
    assert all(s.spec == P() for s in jax.tree.leaves(sh_rep))


def test_gather_spec_for_compute_drops_only_fsdp():
    m = shd.make_mesh(_mesh_cfg(data=2, fsdp=4))
    tree = {"k": jnp.zeros((8, 6)), "odd": jnp.zeros((7, 5))}
    sh = shd.tree_shardings(tree, m, [(".*", "fsdp")])
    assert sh["k"].spec == P("fsdp", None) and sh["odd"].spec == P()
    assert shd.without_axis(sh["k"], "fsdp").spec == P(None, None)
    both = jax.sharding.NamedSharding(m, P(("data", "fsdp"), None))
    assert shd.without_axis(both, "fsdp").spec == P("data", None)


def test_tensor_parallelism_is_refused_by_name():
    with pytest.raises(ValueError, match="no tactic|unknown tactic 'tensor'"):
        shd.validate_rules([("k", "tensor")])
    from clap_jax.train import config as config_lib
    c = config_lib.base()
    c.data.kind = "random"
    c.mesh.data, c.mesh.tensor = -1, 2
    with pytest.raises(ValueError, match="mesh.tensor: tensor parallelism is not offered"):
        config_lib.validate_config(c, num_devices=8, data=False)


def test_fsdp_refuses_large_arrays_it_cannot_split_and_names_sizes_that_would():
    """The 50257 x 768 token embedding splits over 256 FSDP devices (768 = 256 x 3) but not 512: at 512 the
    layout is refused before compiling, with the sizes that work; under the limit it is only reported."""
    abstract = {"wte": jax.ShapeDtypeStruct((50257, 768), jnp.float32),
                "k": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}

    class _Mesh:  # only .shape is read: a 512-way FSDP axis without 512 devices
        shape = {"data": 1, "fsdp": 512, "tensor": 1}
    left = shd.fsdp_leftovers(abstract, _Mesh, [(".*", "fsdp")], 4096)
    assert left == [("wte", (50257, 768), 50257 * 768 * 4)]
    with pytest.raises(ValueError, match=r"fsdp=512: 1 parameter arrays \(147.2 MiB.*wte \(50257, 768\).*"
                                         r"FSDP sizes that split them: \[.*256.*\]"):
        shd.check_fsdp_coverage(abstract, _Mesh, [(".*", "fsdp")], 4096, 64 * 2 ** 20)
    assert shd.check_fsdp_coverage(abstract, _Mesh, [(".*", "fsdp")], 4096, 200 * 2 ** 20) == 50257 * 768 * 4
    _Mesh.shape = {"data": 2, "fsdp": 256, "tensor": 1}
    assert shd.check_fsdp_coverage(abstract, _Mesh, [(".*", "fsdp")], 4096, 0) == 0


def test_optimizer_state_mirrors_param_sharding():
    import optax
    m = shd.make_mesh(_mesh_cfg(data=1, fsdp=-1))
    params = {"a": {"kernel": jnp.zeros((16, 8))}, "b": jnp.zeros((3,))}
    psh = shd.tree_shardings(params, m, [(".*", "fsdp")])
    opt = jax.eval_shape(optax.adam(1e-3).init, params)
    osh = shd.mirror_shardings(opt, params, psh, m)
    mu = osh[0].mu
    assert mu["a"]["kernel"].spec == P("fsdp", None)
    assert osh[0].count.spec == P()


def test_bad_rules_are_rejected():
    with pytest.raises(ValueError, match=r"config.sharding.rules\[0\]"):
        shd.validate_rules([(".*", "shard_everything")])


@pytest.mark.parametrize("field,value,match", [
    ("batch_size", 12, "config.batch_size"),
    ("loss.kind", "chunky", "config.loss.kind"),
    ("data.kind", "webdataset", "config.data.kind"),
    ("optim.lr", 0.0, "config.optim.lr"),
    ("mesh.data", 3, "config.mesh"),
    ("init.msclap", "/nonexistent/CLAP_weights_2023.pth", "config.init.msclap"),
    ("model.text.n_head", 3, "text.n_head"),
])
def test_invalid_config_rejected_before_compute_naming_field(field, value, match):
    c = load_config("tiny")
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        config_lib.validate_config(c)


def test_shipped_configs_validate():
    for name, arg in [("tiny", ""), ("tiny", "fsdp,sharded_loss"), ("demo", ""), ("clap_2023", "fsdp,dirs=/tmp"),
                      ("clap_2023", "cosine,random,bf16,remat")]:
        c = load_config(name, arg)
        config_lib.validate_config(c, num_devices=8)
    c = load_config("clap_2023", "dirs=/tmp")
    with pytest.raises(ValueError, match="config.data.dirs"):
        config_lib.validate_config(load_config("clap_2023"), num_devices=8)
    assert c.model.d_proj == 1024 and c.batch_size == 1536 and c.optim.lr == 1e-3
    assert c.optim.schedule == "reduce_on_plateau" and c.optim.plateau.patience == 15
    assert c.optim.plateau.factor == 0.1
