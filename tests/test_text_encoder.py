import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.nn.text_encoder import TextEncoder
from minidiff.data.tokenizer import NULL_ID, PAD_ID
from minidiff.nn.unet import CrossAttentionBlock, UNet, UNetConfig

TEXT = UNetConfig(resolution=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,),
                  num_groups=4, conditioning="text", vocab_size=20, max_tokens=8, text_dim=16,
                  text_layers=1, text_heads=2, cross_attention_resolutions=(8, 4))


def randomised(model):
  """(graphdef, params) with random values everywhere (zero-initialised layers would hide paths).

  Drawn with numpy: eager jax.random calls per leaf would each compile.
  """
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(3)
  return graphdef, jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), params)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, x, t, tokens):
  return nnx.merge(graphdef, params)(x, t, tokens)


def _tokens(*rows, length=8):
  return jnp.asarray([[NULL_ID] + list(r) + [PAD_ID] * (length - 1 - len(r)) for r in rows], jnp.int32)


def test_encoder_shapes_mask_and_padding_changes_nothing():
  graphdef, params = nnx.split(TextEncoder(20, 12, 16, num_layers=2, num_heads=2, rngs=nnx.Rngs(0)))
  enc = jax.jit(lambda p, tokens: nnx.merge(graphdef, p)(tokens))
  (f1, m1, p1), (f2, m2, p2) = enc(params, _tokens([5, 6, 7], [], length=5)), enc(params, _tokens([5, 6, 7], [], length=12))
  assert f1.shape == (2, 5, 16) and m1.shape == (2, 5) and p1.shape == (2, 16)
  np.testing.assert_array_equal(m1, [[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
  # Seven more pad tokens: identical features of the real tokens and identical pooled vectors.
  np.testing.assert_allclose(f1[0, :4], f2[0, :4], atol=1e-5)
  np.testing.assert_allclose(p1, p2, atol=1e-5)
  assert np.isfinite(np.asarray(f2)).all()  # the empty caption (one valid token) is well defined
  with pytest.raises(ValueError, match="max_len"):
    nnx.merge(graphdef, params)(_tokens([], length=13))


def test_cross_attention_masks_padding():
  graphdef, params = randomised(CrossAttentionBlock(8, 16, groups=4, num_heads=2, rngs=nnx.Rngs(0)))
  block = jax.jit(lambda p, x, f, m: nnx.merge(graphdef, p)(x, (f, m)))
  rng = np.random.default_rng(1)
  x, features = rng.standard_normal((2, 4, 4, 8)), rng.standard_normal((2, 6, 16))
  mask = np.array([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool)
  garbage = np.where(mask[..., None], features, 100 * rng.standard_normal(features.shape))
  a, b = block(params, x, features, mask), block(params, x, garbage, mask)
  np.testing.assert_allclose(a, b, atol=1e-5)  # whatever sits at the padded positions is ignored
  assert np.abs(np.asarray(a - block(params, x, garbage, np.ones_like(mask)))).max() > 1e-2


def test_cross_attention_changes_the_unet_output():
  graphdef, params = randomised(UNet(TEXT, rngs=nnx.Rngs(0)))
  x, t = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32), jnp.array([300, 700])
  # Remove the pooled path (into the time embedding): captions now act through cross-attention only.
  model = nnx.merge(graphdef, params)
  for p in (model.conditioner.proj.kernel, model.conditioner.proj.bias):
    p.value = jnp.zeros_like(p.value)
  no_pool = nnx.state(model, nnx.Param)
  a = _forward(graphdef, no_pool, x, t, _tokens([4, 5], [4, 5]))
  b = _forward(graphdef, no_pool, x, t, _tokens([4, 5], [9, 3]))
  np.testing.assert_allclose(a[0], b[0], atol=1e-6)  # the same caption in row 0
  assert np.abs(np.asarray(a[1] - b[1])).max() > 1e-3  # another caption in row 1
  crosses = [m for _, m in nnx.iter_graph(model) if isinstance(m, CrossAttentionBlock)]
  assert len(crosses) == 3 + 3 + 1  # 8×8: 1 down + 2 up blocks; 4×4: the same; the middle
  for block in crosses:
    block.out.kernel.value = jnp.zeros_like(block.out.kernel.value)
  neither = nnx.state(model, nnx.Param)
  a = _forward(graphdef, neither, x, t, _tokens([4, 5], [4, 5]))
  b = _forward(graphdef, neither, x, t, _tokens([4, 5], [9, 3]))
  np.testing.assert_allclose(a, b, atol=1e-6)  # neither path left: the caption cannot matter


def test_text_config_validation_and_class_model_unchanged():
  text = UNet(TEXT, rngs=nnx.Rngs(0))
  assert not hasattr(text.conditioner, "embed") and hasattr(text.conditioner, "encoder")
  class_model = UNet(UNetConfig(resolution=8, base_channels=8, channel_mults=(1, 2),
                                attention_resolutions=(4,), num_groups=4), rngs=nnx.Rngs(0))
  assert not [m for _, m in nnx.iter_graph(class_model) if isinstance(m, CrossAttentionBlock)]
  with pytest.raises(ValueError, match="cross_attention_resolutions"):
    UNetConfig(**{**TEXT.__dict__, "cross_attention_resolutions": (2,)}).validate()
  with pytest.raises(ValueError, match="conditioning"):
    UNetConfig(conditioning="image").validate()
  with pytest.raises(ValueError, match="text_heads"):
    UNetConfig(**{**TEXT.__dict__, "text_dim": 15}).validate()
