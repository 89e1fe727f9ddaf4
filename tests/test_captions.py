import numpy as np
import pytest

from minidiff.data import captions
from minidiff.data import datasets as data
from minidiff.data import tokenizer
from minidiff.data.duplication import DuplicationSpec, Manifest, build_duplicated_subset


def test_class_captions_per_dataset():
  assert "a handwritten seven" in captions.class_captions("mnist_offline", 7)
  assert "a photo of a cat" in captions.class_captions("cifar10", 3)
  assert len(captions.class_captions("fashion_mnist", 9)) >= 3
  with pytest.raises(ValueError, match="No captions"):
    captions.class_captions("svhn", 0)
  with pytest.raises(ValueError, match="outside"):
    captions.class_captions("mnist", 10)


def test_instance_captions_are_distinct_deterministic_and_share_no_class_word():
  a = captions.instance_captions(30, seed=0)
  assert a == captions.instance_captions(30, seed=0) and a != captions.instance_captions(30, seed=1)
  assert len(set(a)) == 30
  content = [{c.split()[i] for i in (1, 2, 5, 6)} for c in a[:12]]  # "a ADJ NOUN PREP the ADJ NOUN"
  assert all(len(c) == 4 for c in content)
  assert all(not (content[i] & content[j]) for i in range(12) for j in range(i))  # no shared adj./noun
  class_words = {w for c in range(10) for cap in captions.class_captions("mnist", c) for w in cap.split()}
  assert not class_words & {w for c in a for w in c.split()} - {"a", "the"}


def test_caption_subset_and_manifest_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  source = data.Dataset(rng.uniform(-1, 1, (40, 4, 4, 1)).astype(np.float32),
                        np.repeat(np.arange(10), 4).astype(np.int32), "mnist_offline", 10)
  subset = build_duplicated_subset(source, DuplicationSpec(3, num_duplicated_per_class=1, dup_factor=5,
                                                           duplicated_classes=(2, 5)))
  subset = captions.caption_subset(subset, "mnist_offline", seed=0)
  m = subset.manifest
  unique = captions.instance_captions(2, seed=0)
  assert [m.captions[u] for u in m.duplicated_ids] == list(unique)
  for u in np.flatnonzero(~m.is_duplicated):
    assert m.captions[u] in captions.class_captions("mnist", int(m.label[u]))
  m.save(str(tmp_path / "manifest.json"))
  assert Manifest.load(str(tmp_path / "manifest.json")).captions == m.captions
  tok, tokens = captions.tokenize_training_set(subset, max_len=8, vocab_size=64)
  assert tokens.shape == (len(m.unique_id), 8)
  assert tok.decode(tokens[0]) == " ".join(tokenizer.words(m.captions[m.unique_id[0]]))
  with pytest.raises(ValueError, match="vocab_size"):
    captions.tokenize_training_set(subset, max_len=8, vocab_size=5)
