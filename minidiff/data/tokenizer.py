"""A word-level tokenizer built from the training captions, saved next to the checkpoints.

Words are lower-case runs of letters or of digits (`words`). The vocabulary is three special
tokens followed by the sorted training words:
  * `<pad>` (id 0) fills a caption up to `max_len`; the text encoder masks it out everywhere;
  * `<unk>` (id 1) stands for a word that no training caption contains;
  * `<null>` (id 2) starts every caption, so even the empty caption has one valid token and
    attention over a caption is never fully masked. The empty caption, `[<null>, <pad>, …]`, is the
    null condition of classifier-free guidance.
Sampling loads the training run's `tokenizer.json`, so prompts map to the same ids.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

PAD, UNK, NULL = "<pad>", "<unk>", "<null>"
SPECIALS = (PAD, UNK, NULL)
PAD_ID, UNK_ID, NULL_ID = 0, 1, 2
FILENAME = "tokenizer.json"
_WORD = re.compile(r"[a-z]+|[0-9]+")


def words(text: str) -> list[str]:
  """The words of `text`: lower-cased runs of letters or digits; punctuation and spaces separate."""
  return _WORD.findall(text.lower())


def empty_caption(max_len: int) -> np.ndarray:
  """The empty caption's ids [max_len] — the null condition — whatever the vocabulary."""
  return np.asarray([NULL_ID] + [PAD_ID] * (max_len - 1), np.int32)


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """Word → id map. `vocab[i]` is the word of id i; `max_len` counts the leading `<null>` token."""

  vocab: tuple[str, ...]
  max_len: int

  def __post_init__(self):
    if tuple(self.vocab[:3]) != SPECIALS:
      raise ValueError(f"A vocabulary starts with {SPECIALS}; got {tuple(self.vocab[:3])}.")
    if self.max_len < 1:
      raise ValueError(f"max_len={self.max_len} must be ≥ 1 (the <null> token).")
    object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.vocab)})

  @classmethod
  def build(cls, captions: Iterable[str], *, max_len: int) -> "Tokenizer":
    """The vocabulary of `captions` (sorted, so the same captions always give the same ids)."""
    vocab = sorted({w for c in captions for w in words(c)} - set(SPECIALS))
    return cls(SPECIALS + tuple(vocab), max_len)

  def __len__(self) -> int:
    return len(self.vocab)

  @property
  def content_words(self) -> tuple[str, ...]:
    """The vocabulary without the special tokens."""
    return self.vocab[len(SPECIALS):]

  def encode(self, text: str) -> np.ndarray:
    """`text` → int32 ids [max_len]: `<null>`, one id per word (`<unk>` if unknown), `<pad>`s.

    Raises:
      ValueError: when the caption has more than max_len − 1 words (it is never cut silently).
    """
    ids = [NULL_ID] + [self._ids.get(w, UNK_ID) for w in words(text)]
    if len(ids) > self.max_len:
      raise ValueError(f"Caption {text!r} has {len(ids) - 1} words; this tokenizer holds at most "
                       f"{self.max_len - 1} (model.max_tokens={self.max_len}, one for <null>). "
                       f"Shorten the prompt or train with a larger --config.model.max_tokens.")
    return np.asarray(ids + [PAD_ID] * (self.max_len - len(ids)), np.int32)

  def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
    """[len(texts), max_len] int32 ids."""
    return np.stack([self.encode(t) for t in texts]) if len(texts) else np.zeros((0, self.max_len), np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Ids → the words they stand for, space-separated; `<pad>` and `<null>` are dropped."""
    return " ".join(self.vocab[int(i)] for i in np.asarray(ids).ravel() if int(i) not in (PAD_ID, NULL_ID))

  @property
  def null_tokens(self) -> np.ndarray:
    """The null condition: the empty caption, [max_len] int32."""
    return empty_caption(self.max_len)

  def unknown_words(self, text: str) -> list[str]:
    """Words of `text` that map to `<unk>`."""
    return [w for w in words(text) if w not in self._ids]

  def save(self, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(dict(version=1, max_len=self.max_len, vocab=list(self.vocab)), f, indent=0)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: a text model's workdir holds the tokenizer "
                              f"that train.py built from its captions. Train (or resume) the run first.")
    with open(path) as f:
      d = json.load(f)
    return cls(tuple(d["vocab"]), int(d["max_len"]))
