import numpy as np
import pytest

from minidiff.data import tokenizer as tokenizer_lib
from minidiff.data.tokenizer import NULL_ID, PAD_ID, UNK_ID, Tokenizer


@pytest.fixture
def tok():
  return Tokenizer.build(["a handwritten seven", "The digit seven.", "a quiet lantern"], max_len=6)


def test_vocabulary_is_specials_then_sorted_words(tok):
  assert tok.vocab == ("<pad>", "<unk>", "<null>", "a", "digit", "handwritten", "lantern", "quiet",
                       "seven", "the")
  assert tok.content_words == tok.vocab[3:]


def test_round_trip_and_padding(tok):
  ids = tok.encode("A handwritten  seven!")
  np.testing.assert_array_equal(ids, [NULL_ID, 3, 5, 8, PAD_ID, PAD_ID])
  assert ids.dtype == np.int32
  assert tok.decode(ids) == "a handwritten seven"
  batch = tok.encode_batch(["the digit seven", "a quiet lantern"])
  assert batch.shape == (2, 6) and [tok.decode(r) for r in batch] == ["the digit seven", "a quiet lantern"]


def test_unknown_words_map_to_unk(tok):
  ids = tok.encode("a purple seven 42")
  np.testing.assert_array_equal(ids, [NULL_ID, 3, UNK_ID, 8, UNK_ID, PAD_ID])
  assert tok.decode(ids) == "a <unk> seven <unk>"
  assert tok.unknown_words("a purple seven 42") == ["purple", "42"]


def test_empty_caption_is_the_null_condition_with_one_valid_token(tok):
  np.testing.assert_array_equal(tok.null_tokens, [NULL_ID] + [PAD_ID] * 5)
  np.testing.assert_array_equal(tok.encode(""), tok.null_tokens)
  assert tok.decode(tok.null_tokens) == ""


def test_too_long_caption_is_a_clear_error(tok):
  with pytest.raises(ValueError, match="max_tokens"):
    tok.encode("a a a a a a")  # 6 words + <null> > 6


def test_save_load(tok, tmp_path):
  path = str(tmp_path / tokenizer_lib.FILENAME)
  tok.save(path)
  assert Tokenizer.load(path) == tok
  with pytest.raises(FileNotFoundError, match="Train"):
    Tokenizer.load(str(tmp_path / "missing.json"))
