"""Text scenario (Wen et al. 2024, CPU size): unique captions on duplicated images, class captions else.

16×16 offline MNIST. K = 10 images (one per class) carry unique instance-level captions ("a quiet
lantern beside the amber river") and are each repeated D = 40 times; 400 other images (40 per class)
carry class-level captions ("a handwritten seven", four templates per class). Mixing ratio
K·D / (K·D + 400) = 400/800 = 50% of the training examples; change it with data.dup_factor,
data.num_duplicated_per_class or data.n_unique_per_class. A word-level tokenizer and a 2-layer
transformer text encoder are trained jointly with the UNet, which cross-attends to the tokens at
8×8 and 4×4. 2,000 steps of batch 32: each captioned image is seen ~3,200 times, about when the
first copies appeared in earlier runs; ~15 min on an idle 2-core CPU (measured 25–100 img/s when
shared; see docs/performance.md).
"""
import ml_collections

from configs import mnist_dup


def get_config() -> ml_collections.ConfigDict:
  c = mnist_dup.get_config()
  c.data.n_unique_per_class = 41  # 1 duplicated (unique caption) + 40 with class captions, per class
  c.data.num_duplicated_per_class = 1
  c.data.dup_factor = 40
  c.data.duplicated_classes = ()  # () = every class: K = 10 unique captions
  c.data.n_unique_per_duplicated_class = 0  # every class the same size

  c.model.conditioning = "text"
  c.model.vocab_size = 128  # capacity; the tokenizer built from the captions must fit (69 tokens here)
  c.model.max_tokens = 16  # <null> + up to 15 words (captions ≤ 7 words, + 4 from perturbations)
  c.model.text_dim = 64
  c.model.text_layers = 2
  c.model.text_heads = 2
  c.model.cross_attention_resolutions = (8, 4)

  c.train.steps = 2000
  c.train.checkpoint_every = 250

  # `python sample.py` with no --prompt samples the K unique captions (memorized prompts) and class
  # captions (non-memorized prompts), half each, with every strategy below. "+name:param=v" adds a
  # prompt perturbation of Somepalli et al. (minidiff.study.perturbation) to a guidance strategy.
  # (`dynamic` is left out for time: at this scale the authors' rule fires in the first steps and
  # equals CFG, docs/results/README.md; add it with --guidance.)
  c.study.guidance = ("none,conditional,cfg,static:tau=500,opposite:tau=500,"
                      "cfg+embedding_noise:lam=0.1,cfg+random_tokens:k=4,cfg+repeat_words:k=4,"
                      "cfg+random_numbers:k=4")
  c.study.num_samples = 200
  c.monitor.every = 0  # not measured on the text model yet; the monitor samples training captions
  c.monitor.class_accuracy = False  # a caption requests no class
  return c
