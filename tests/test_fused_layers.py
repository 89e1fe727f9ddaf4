"""The faster layer formulations of minidiff.nn.layers equal the plain ones, forward and gradient.

`group_norm` / `GroupNorm` against flax's `nnx.GroupNorm`, `self_attention` against
`jax.nn.dot_product_attention`; and a whole tiny UNet built with `fused_layers=True` (both swapped
in) against the plain one: the same parameter tree, forward and gradient within ATOL, and a
checkpoint of the plain model restoring into the fused one.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.nn import layers

ATOL = 2e-5  # float32; the two orders of the same sums differ by ~1e-6 here


def _rand(key, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(key), shape, jnp.float32)


@pytest.mark.parametrize("shape,groups", [((3, 5, 5, 16), 4), ((2, 7, 8), 8), ((2, 4, 4, 8), 1)])
def test_group_norm_equals_flax_forward_and_gradient(shape, groups):
  c = shape[-1]
  ref = nnx.GroupNorm(c, groups, rngs=nnx.Rngs(0))
  ref.scale[...] = 1.0 + _rand(1, (c,), 0.3)
  ref.bias[...] = _rand(2, (c,), 0.3)
  x = 2.0 + _rand(3, shape, 3.0)  # a large mean: the one-pass variance must hold up
  w = _rand(4, shape)

  def loss(fn, x, scale, bias):
    return jnp.sum(w * fn(x, scale, bias))

  plain = lambda x, s, b: _flax(ref, x, s, b)  # noqa: E731
  fused = lambda x, s, b: layers.group_norm(x, s, b, groups)  # noqa: E731
  args = (x, ref.scale[...], ref.bias[...])
  np.testing.assert_allclose(fused(*args), plain(*args), atol=ATOL)
  g_plain = jax.jit(jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2)))(*args)
  g_fused = jax.jit(jax.grad(lambda *a: loss(fused, *a), argnums=(0, 1, 2)))(*args)
  for a, b in zip(g_fused, g_plain):
    np.testing.assert_allclose(a, b, atol=ATOL * max(1.0, float(jnp.abs(b).max())))


def _flax(module, x, scale, bias):
  """flax's GroupNorm `module` applied with the given (possibly traced) scale and bias."""
  graphdef, state = nnx.split(module)
  pick = lambda path, _: scale if "scale" in jax.tree_util.keystr(path) else bias  # noqa: E731
  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(pick, state))(x)


def test_group_norm_module_is_a_drop_in():
  a, b = nnx.Rngs(7), nnx.Rngs(7)
  ours, theirs = layers.GroupNorm(16, 4, rngs=a), nnx.GroupNorm(16, 4, rngs=b)
  s_ours, s_theirs = nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
  for u, v in zip(jax.tree.leaves(s_ours), jax.tree.leaves(s_theirs)):
    np.testing.assert_array_equal(u, v)
  # the same draws from rngs: layers built after it are initialised alike
  np.testing.assert_array_equal(jax.random.key_data(a.params()), jax.random.key_data(b.params()))
  x = _rand(0, (2, 4, 4, 16)).astype(jnp.bfloat16)
  assert ours(x).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="num_groups=3 does not divide num_features=16"):
    layers.GroupNorm(16, 3, rngs=a)


def _tiny_unet_configs(tiny_config):
  """(config, plain UNetConfig, fused UNetConfig) of the tiny config cut to one level (a fast compile;
  the middle block keeps its self-attention)."""
  import dataclasses

  from minidiff import config as config_lib
  tiny_config.model.channel_mults, tiny_config.model.attention_resolutions = (1,), ()
  cfg = config_lib.unet_config(tiny_config)
  assert not cfg.fused_layers  # the default: the committed results are the plain layers'
  return tiny_config, cfg, dataclasses.replace(cfg, fused_layers=True)


def test_fused_unet_equals_the_plain_unet_forward_and_gradient(tiny_config):
  from minidiff.nn import unet
  _, cfg, cfg_fused = _tiny_unet_configs(tiny_config)
  model, fused = unet.UNet(cfg, rngs=nnx.Rngs(0)), unet.UNet(cfg_fused, rngs=nnx.Rngs(0))
  kinds = lambda m: [type(x) for _, x in nnx.iter_graph(m)]  # noqa: E731
  assert kinds(model).count(nnx.GroupNorm) >= 10 and nnx.GroupNorm not in kinds(fused)
  assert kinds(fused).count(layers.GroupNorm) == kinds(model).count(nnx.GroupNorm)
  assert [m.fused for net in (model, fused) for _, m in nnx.iter_graph(net)
          if isinstance(m, unet.AttentionBlock)] == [False, True]  # the middle block's
  graphdef, params = nnx.split(model, nnx.Param)
  graphdef_fused, params_fused = nnx.split(fused, nnx.Param)
  # the same parameter tree (names, shapes), initialised alike: a checkpoint loads into either
  assert jax.tree_util.tree_structure(params_fused) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree.leaves(params_fused), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # non-trivial parameters (GroupNorm starts at 1 and 0, some convolutions at zero)
  rng = np.random.default_rng(0)  # host draws: one jax.random call per leaf shape would compile each
  params = jax.tree.map(lambda p: p + np.float32(0.1) * rng.standard_normal(p.shape, np.float32), params)
  x, t, y = _rand(0, (4, 8, 8, 1)), jnp.asarray([1, 50, 99, 7]), jnp.asarray([0, 3, 10, 2])
  apply = jax.jit(lambda g, p: nnx.merge(g, p)(x, t, y), static_argnums=0)
  loss = lambda g, p: jnp.mean(apply(g, p) ** 2)  # noqa: E731
  out, out_fused = apply(graphdef, params), apply(graphdef_fused, params)
  assert float(jnp.abs(out).max()) > 0.1  # a non-trivial output to compare
  np.testing.assert_allclose(out_fused, out, atol=ATOL)
  g_ref = jax.jit(jax.grad(lambda p: loss(graphdef, p)))(params)
  g_new = jax.jit(jax.grad(lambda p: loss(graphdef_fused, p)))(params)
  assert jax.tree.structure(g_new) == jax.tree.structure(g_ref)
  for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=ATOL * max(1.0, float(jnp.abs(b).max())))


def test_a_plain_checkpoint_restores_into_the_fused_model(tiny_config, tmp_path):
  import dataclasses

  from minidiff import config as config_lib
  from minidiff.train import state as train_state
  from minidiff.train.checkpoint import Checkpointer
  config, _, _ = _tiny_unet_configs(tiny_config)
  _, saved, _ = train_state.init_state(config)
  saved = dataclasses.replace(saved, step=3)
  config.model.fused_layers = True
  assert config_lib.unet_config(config).fused_layers
  _, template, _ = train_state.init_state(config)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(3, saved.as_dict())
  restored = train_state.restore_state(ckpt, template)
  ckpt.close()
  assert restored.step == 3
  assert jax.tree.structure(restored.as_dict()) == jax.tree.structure(saved.as_dict())
  for a, b in zip(jax.tree.leaves(restored.as_dict()), jax.tree.leaves(saved.as_dict())):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("heads", [1, 2])
def test_self_attention_equals_dot_product_attention(heads):
  b, t, c = 3, 16, 8
  q, k, v, w = (_rand(i, (b, t, c)) for i in range(4))
  split = lambda a: a.reshape(b, t, heads, c // heads)  # noqa: E731
  plain = lambda q, k, v: jax.nn.dot_product_attention(split(q), split(k), split(v)).reshape(b, t, c)  # noqa: E731
  fused = lambda q, k, v: layers.self_attention(q, k, v, heads)  # noqa: E731
  np.testing.assert_allclose(jax.jit(fused)(q, k, v), jax.jit(plain)(q, k, v), atol=ATOL)
  g_plain = jax.jit(jax.grad(lambda *a: jnp.sum(w * plain(*a)), argnums=(0, 1, 2)))(q, k, v)
  g_fused = jax.jit(jax.grad(lambda *a: jnp.sum(w * fused(*a)), argnums=(0, 1, 2)))(q, k, v)
  for a, b_ in zip(g_fused, g_plain):
    np.testing.assert_allclose(a, b_, atol=ATOL)
