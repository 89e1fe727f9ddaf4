"""Twelve memorized images: the headline rerun's class scenario (pre-check 1 of the rerun).

Four memorized classes (0, 1, 4, 7: round, thin, open and angled digits) have 20 unique images
each, three of which are repeated 40×; the six other classes have 300 unique images each. The 12
duplicates are 84% of their classes and 20% of all 2,348 training examples (the default: two
duplicates, 7%), so a class condition points at three images while most of the data is plain.
Whether this stays in the paper's regime (unguided copies ≤ 5% of memorized-condition samples,
CFG ≥ 50%, conditional class accuracy ≥ 90% on the other classes) is what its pre-check measures
(docs/results/README.md, §1).
"""
import ml_collections

from configs import mnist_dup


def get_config() -> ml_collections.ConfigDict:
  c = mnist_dup.get_config()
  c.data.n_unique_per_class = 300
  c.data.duplicated_classes = (0, 1, 4, 7)
  c.data.n_unique_per_duplicated_class = 20
  c.data.num_duplicated_per_class = 3
  c.data.dup_factor = 40
  c.study.guidance = "none,conditional,cfg:w=3,7.5"  # the pre-check's arms
  return c
