import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.nn.layers import timestep_embedding
from minidiff.nn.unet import UNet, UNetConfig, count_params


def _randomise_zero_layers(model: UNet) -> None:
  """Zero-initialised output layers make a fresh UNet output 0; give every param random values.

  Drawn with numpy: eager jax.random per leaf shape costs one XLA compile each.
  """
  params = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(3)
  new = [jnp.asarray(0.1 * rng.standard_normal(x.shape), jnp.float32) for x in leaves]
  nnx.update(model, jax.tree.unflatten(treedef, new))


@nnx.jit(static_argnames="train")
def _apply(model: UNet, x, t, c, key=None, train=False):
  """One compiled forward pass (eager op-by-op calls compile every primitive separately)."""
  return model(x, t, c, dropout_key=key if train else None)


@pytest.fixture(scope="module")
def small():
  cfg = UNetConfig(resolution=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,),
                   num_groups=4, num_classes=3)
  model = UNet(cfg, rngs=nnx.Rngs(0))
  _randomise_zero_layers(model)
  return cfg, model


def test_default_shapes_and_parameter_count():
  model = UNet(UNetConfig(), rngs=nnx.Rngs(0))
  assert count_params(model) == 1_114_209  # the 1.1M-parameter default (configs/mnist_dup.py)
  out = _apply(model, jnp.zeros((2, 16, 16, 1)), jnp.array([0, 999]), jnp.array([3, 10]))
  assert out.shape == (2, 16, 16, 1)
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised output conv


def test_cifar_shape():
  cfg = UNetConfig(resolution=8, in_channels=3, base_channels=8, channel_mults=(1, 2, 2),
                   attention_resolutions=(), num_groups=4)
  model = UNet(cfg, rngs=nnx.Rngs(0))
  out = jax.eval_shape(lambda x: model(x, jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32)),
                       jax.ShapeDtypeStruct((3, 8, 8, 3), jnp.float32))
  assert out.shape == (3, 8, 8, 3)


def test_condition_and_null_id_change_the_output(small):
  cfg, model = small
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 1))
  t = jnp.array([500])
  outs = [np.asarray(_apply(model, x, t, jnp.array([c]))) for c in (0, 1, cfg.null_id)]
  assert np.abs(outs[0] - outs[1]).max() > 1e-3
  assert np.abs(outs[0] - outs[2]).max() > 1e-3
  assert np.abs(outs[0] - np.asarray(_apply(model, x, jnp.array([100]), jnp.array([0])))).max() > 1e-3


def test_dropout_only_with_a_key():
  cfg = UNetConfig(resolution=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(),
                   num_groups=4, dropout=0.5)
  model = UNet(cfg, rngs=nnx.Rngs(0))
  _randomise_zero_layers(model)
  args = (jnp.ones((1, 8, 8, 1)), jnp.array([5]), jnp.array([1]))
  plain = _apply(model, *args)
  np.testing.assert_array_equal(plain, _apply(model, *args, jax.random.key(0), train=False))
  a = _apply(model, *args, jax.random.key(0), train=True)
  b = _apply(model, *args, jax.random.key(1), train=True)
  assert np.abs(np.asarray(a - b)).max() > 1e-4
  assert np.abs(np.asarray(a - plain)).max() > 1e-4


def test_init_is_deterministic_per_seed():
  cfg = UNetConfig(resolution=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(),
                   num_groups=4)
  p = [nnx.state(UNet(cfg, rngs=nnx.Rngs(s)), nnx.Param) for s in (0, 0, 1)]
  k = lambda st: np.asarray(st["conv_in"]["kernel"][...])  # noqa: E731
  np.testing.assert_array_equal(k(p[0]), k(p[1]))
  assert not np.allclose(k(p[0]), k(p[2]))
  # LeCun normal: std ≈ 1/√fan_in with fan_in = 3·3·1.
  big = UNet(UNetConfig(), rngs=nnx.Rngs(0))
  w = np.asarray(nnx.state(big, nnx.Param)["down"][0][0]["conv1"]["kernel"][...])
  np.testing.assert_allclose(w.std(), 1 / np.sqrt(9 * 32), rtol=0.05)


def test_timestep_embedding_closed_form():
  e = np.asarray(timestep_embedding(jnp.array([0, 7]), 8))
  np.testing.assert_allclose(e[0], [1, 1, 1, 1, 0, 0, 0, 0])
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  np.testing.assert_allclose(e[1], np.concatenate([np.cos(7 * freqs), np.sin(7 * freqs)]), rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(resolution=10, channel_mults=(1, 2, 2)), "not divisible"),
    (dict(attention_resolutions=(5,)), "no level has"),
    (dict(base_channels=30, num_groups=8), "model.num_groups=8 does not divide the channel count 30"),
    (dict(dropout=1.0), "dropout"),
])
def test_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    UNetConfig(**kwargs).validate()


def test_broadcast_upsample_equals_image_resize_forward_and_backward():
  """The fast upsampling path (broadcast) is the plain one (jax.image.resize nearest), gradients too."""
  from minidiff.nn.unet import upsample_nearest
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5, 4)), jnp.float32)
  g = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 10, 4)), jnp.float32)
  plain = lambda a: jax.image.resize(a, (2, 6, 10, 4), "nearest")  # noqa: E731
  np.testing.assert_array_equal(upsample_nearest(x), plain(x))
  # The gradient sums the same 4 values per pixel, in an order XLA chooses: equal up to rounding.
  np.testing.assert_allclose(jax.vjp(upsample_nearest, x)[1](g)[0], jax.vjp(plain, x)[1](g)[0],
                             rtol=0, atol=1e-6)
