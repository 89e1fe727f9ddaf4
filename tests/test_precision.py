import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from minidiff.train import precision


def test_cast_floating_leaves_integers_alone():
  tree = dict(w=jnp.ones((2, 2)), step=jnp.int32(3), ids=np.arange(3))
  out = precision.cast_floating(tree, jnp.bfloat16)
  assert out["w"].dtype == jnp.bfloat16
  assert out["step"].dtype == jnp.int32 and out["ids"].dtype == np.arange(3).dtype


def test_with_compute_dtype_runs_in_bf16_and_returns_float32():
  seen = {}

  def apply(params, x, scale):
    seen["dtypes"] = (params["w"].dtype, x.dtype)
    return (x @ params["w"]) * scale

  params = dict(w=jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32))
  x = jnp.asarray(np.random.default_rng(1).standard_normal((5, 4)), jnp.float32)
  assert precision.with_compute_dtype(apply, jnp.float32) is apply
  out = precision.with_compute_dtype(apply, jnp.bfloat16)(params, x, 2.0)
  assert seen["dtypes"] == (jnp.bfloat16, jnp.bfloat16) and out.dtype == jnp.float32
  # bf16 keeps 8 mantissa bits: relative error ≲ 2⁻⁸ per operand, a few times that after a sum of 4.
  np.testing.assert_allclose(out, (x @ params["w"]) * 2.0, rtol=0.05, atol=0.05)


def test_compute_dtype_from_config():
  c = ml_collections.ConfigDict(dict(model=dict()))
  assert precision.compute_dtype(c) == jnp.float32  # runs saved before the field existed
  c.model.compute_dtype = "bfloat16"
  assert precision.compute_dtype(c) == jnp.bfloat16
  c.model.compute_dtype = "float16"
  with pytest.raises(ValueError, match="compute_dtype='float16'.*bfloat16"):
    precision.compute_dtype(c)
