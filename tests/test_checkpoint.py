import glob
import logging
import os
import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from minidiff.train.checkpoint import Checkpointer, abstract_like


def _state(v):
  return dict(step=np.int64(v), params=dict(w=jnp.full((2, 3), float(v)), b=jnp.arange(3.0) + v))


def _saved(tmp_path, steps=(1, 2)):
  ckpt = Checkpointer(str(tmp_path))
  for s in steps:
    ckpt.save(s, _state(s))
  return ckpt


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


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _flip_a_byte(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _data_files(step_dir):
  return glob.glob(os.path.join(step_dir, "default", "d", "*"))


DAMAGE = {  # how the latest checkpoint's folder is damaged (what a disk fault or a bad copy leaves)
    "only_metadata_left": lambda d: [os.remove(os.path.join(r, f)) for r, _, fs in os.walk(d)
                                     for f in fs if not f.endswith("_CHECKPOINT_METADATA")],
    "data_truncated": lambda d: [_truncate(p) for p in _data_files(d)],
    "data_deleted": lambda d: [os.remove(p) for p in _data_files(d)],
    "byte_flipped": lambda d: [_flip_a_byte(p) for p in _data_files(d)],
    "manifest_truncated": lambda d: _truncate(os.path.join(d, "default", "manifest.ocdbt")),
    "tree_metadata_deleted": lambda d: os.remove(os.path.join(d, "default", "_METADATA")),
    "item_folder_deleted": lambda d: shutil.rmtree(os.path.join(d, "default")),
    "emptied": lambda d: [shutil.rmtree(d), os.makedirs(d)],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_falls_back_with_a_warning_and_is_moved_aside(tmp_path, caplog, damage):
  ckpt = _saved(tmp_path)
  DAMAGE[damage](os.path.join(ckpt.directory, "2"))
  with caplog.at_level(logging.WARNING):
    step, restored = ckpt.restore(abstract_like(_state(0)))
  assert step == 1 and int(restored["step"]) == 1
  assert "Checkpoint 2" in caplog.text and "cannot be restored" in caplog.text
  # Moved aside (kept for inspection), so latest_step() is the restored one and 2 can be rewritten.
  assert ckpt.all_steps() == [1] and os.listdir(ckpt.quarantine) == ["2"]
  ckpt.save(2, _state(2))
  assert ckpt.restore(abstract_like(_state(0)))[0] == 2
  ckpt.close()


def test_interrupted_save_is_ignored_then_cleaned_up(tmp_path, monkeypatch, caplog):
  ckpt = _saved(tmp_path, steps=(1,))

  def crash(self, directory):  # the array files are written; the merge and the rename are not
    raise KeyboardInterrupt("simulated kill during the save")

  monkeypatch.setattr(ocp.handlers.StandardCheckpointHandler, "finalize", crash)
  with pytest.raises(KeyboardInterrupt):
    ckpt.save(2, _state(2))
  monkeypatch.undo()
  partial = ckpt.partial_saves()
  assert len(partial) == 1 and os.path.basename(partial[0]).startswith("2.orbax-checkpoint-tmp")
  assert glob.glob(os.path.join(partial[0], "**", "*"), recursive=True)  # partly written
  ckpt = Checkpointer(str(tmp_path))  # as a rerun sees it
  assert ckpt.all_steps() == [1]
  with caplog.at_level(logging.WARNING):
    assert ckpt.restore(abstract_like(_state(0)))[0] == 1
  assert "Checkpoint 2 is incomplete" in caplog.text
  ckpt.save(2, _state(2))
  assert ckpt.partial_saves() == [] and ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_all_checkpoints_unreadable_is_an_error_and_nothing_moves(tmp_path):
  ckpt = _saved(tmp_path)
  for s in (1, 2):
    DAMAGE["data_truncated"](os.path.join(ckpt.directory, str(s)))
  with pytest.raises(ValueError, match=r"(?s)None of the checkpoints .* can be restored.*"
                                       r"does not start over.*step 2: .*step 1: "):
    ckpt.restore(abstract_like(_state(0)))
  assert ckpt.all_steps() == [1, 2] and not os.path.exists(ckpt.quarantine)
  ckpt.close()


def test_no_checkpoint_and_mismatched_structure(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="train first"):
    ckpt.restore(abstract_like(_state(0)))
  ckpt.save(1, _state(1))
  ckpt.save(2, _state(2))
  wrong = dict(step=np.int64(0), params=dict(w=jnp.zeros((4, 4)), b=jnp.zeros(3)))
  with pytest.raises(ValueError, match="config differs"):
    ckpt.restore(abstract_like(wrong))
  assert ckpt.all_steps() == [1, 2]  # a config mismatch never moves checkpoints
  ckpt.close()
