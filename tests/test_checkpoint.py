import logging
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.checkpoint import Checkpointer, abstract_like


def _state(v):
  return dict(step=np.int64(v), params=dict(w=jnp.full((2, 3), float(v)), b=jnp.arange(3.0) + v))


def test_round_trip_and_max_to_keep(tmp_path):
  ckpt = Checkpointer(str(tmp_path), max_to_keep=2)
  for s in (1, 2, 3):
    ckpt.save(s, _state(s))
  assert ckpt.all_steps() == [2, 3]
  step, restored = ckpt.restore(abstract_like(_state(0)))
  assert step == 3 and int(restored["step"]) == 3
  np.testing.assert_array_equal(restored["params"]["w"], np.full((2, 3), 3.0))
  step, restored = ckpt.restore(abstract_like(_state(0)), step=2)
  np.testing.assert_array_equal(restored["params"]["b"], [2.0, 3.0, 4.0])
  ckpt.close()


def test_unreadable_latest_falls_back_with_a_warning(tmp_path, caplog):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, _state(1))
  ckpt.save(2, _state(2))
  # Corrupt checkpoint 2: remove its array data.
  for root, _, files in os.walk(os.path.join(ckpt.directory, "2")):
    for f in files:
      if not f.endswith("_CHECKPOINT_METADATA"):
        os.remove(os.path.join(root, f))
  with caplog.at_level(logging.WARNING):
    step, restored = ckpt.restore(abstract_like(_state(0)))
  assert step == 1 and int(restored["step"]) == 1
  assert "Checkpoint 2" in caplog.text and "cannot be restored" in caplog.text
  ckpt.close()


def test_no_checkpoint_and_mismatched_structure(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="train first"):
    ckpt.restore(abstract_like(_state(0)))
  ckpt.save(1, _state(1))
  wrong = dict(step=np.int64(0), params=dict(w=jnp.zeros((4, 4)), b=jnp.zeros(3)))
  with pytest.raises(ValueError, match="matches the model"):
    ckpt.restore(abstract_like(wrong))
  ckpt.close()
  shutil.rmtree(tmp_path)
