"""The faster layer formulations of minidiff.nn.layers equal the plain ones, forward and gradient.

`group_norm` / `GroupNorm` against flax's `nnx.GroupNorm`, `self_attention` against
`jax.nn.dot_product_attention`; and a whole tiny UNet with every GroupNorm swapped for
`layers.GroupNorm` against the UNet as built.
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


def test_unet_with_fused_group_norm_equals_the_unet(tiny_config, monkeypatch):
  from minidiff import config as config_lib
  from minidiff.nn import unet
  tiny_config.model.channel_mults, tiny_config.model.attention_resolutions = (1,), ()  # fast compile
  cfg = config_lib.unet_config(tiny_config)
  flax_group_norm = nnx.GroupNorm
  model = unet.UNet(cfg, rngs=nnx.Rngs(0))
  monkeypatch.setattr(unet.nnx, "GroupNorm", layers.GroupNorm)  # only while this UNet is built
  fused = unet.UNet(cfg, rngs=nnx.Rngs(0))
  monkeypatch.undo()
  kinds = lambda m: [type(x) for _, x in nnx.iter_graph(m)]  # noqa: E731
  assert kinds(model).count(flax_group_norm) >= 10 and flax_group_norm not in kinds(fused)
  assert kinds(fused).count(layers.GroupNorm) == kinds(model).count(flax_group_norm)
  graphdef, params = nnx.split(model)
  graphdef_fused, params_fused = nnx.split(fused)
  for a, b in zip(jax.tree.leaves(params_fused), jax.tree.leaves(params)):  # initialised alike
    np.testing.assert_array_equal(a, b)
  # non-trivial parameters (GroupNorm starts at 1 and 0, some convolutions at zero)
  rng = np.random.default_rng(0)  # host draws: one jax.random call per leaf shape would compile each
  params = jax.tree.map(lambda p: p + np.float32(0.1) * rng.standard_normal(p.shape, np.float32), params)
  x, t, y = _rand(0, (4, 8, 8, 1)), jnp.asarray([1, 50, 99, 7]), jnp.asarray([0, 3, 10, 2])
  loss = lambda g, p: jnp.mean(nnx.merge(g, p)(x, t, y) ** 2)  # noqa: E731
  apply = jax.jit(lambda g, p: nnx.merge(g, p)(x, t, y), static_argnums=0)
  np.testing.assert_allclose(apply(graphdef_fused, params), apply(graphdef, params), atol=ATOL)
  g_ref = jax.jit(jax.grad(lambda p: loss(graphdef, p)))(params)
  g_new = jax.jit(jax.grad(lambda p: loss(graphdef_fused, p)))(params)
  assert jax.tree.structure(g_new) == jax.tree.structure(g_ref)
  for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=ATOL * max(1.0, float(jnp.abs(b).max())))


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
