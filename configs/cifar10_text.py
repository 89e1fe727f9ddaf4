"""Text scenario at GPU/TPU scale: CIFAR-10 32×32, Gu et al.'s model size, cross-attention at 16/8.

200 images (20 per class) with unique captions, each repeated ×20, among 2,000 class-captioned
images (mixing ratio 4,000 / 6,000 = 2/3 of the examples are duplicates, as in Jain et al.'s
"200 images repeated 200×, mixed with 3× as many plain images" at a smaller factor). Needs the
tfds cifar10 prepared in data.data_dir (see README).
"""
import ml_collections

from configs import cifar10_dup, mnist_text


def get_config() -> ml_collections.ConfigDict:
  c = cifar10_dup.get_config()
  text = mnist_text.get_config()
  c.data.n_unique_per_class = 220  # 20 duplicated (unique captions) + 200 class-captioned per class
  c.data.num_duplicated_per_class = 20
  c.data.dup_factor = 20
  c.model.conditioning = "text"
  c.model.vocab_size = 256
  c.model.max_tokens = 16
  c.model.text_dim = 256
  c.model.text_layers = 4
  c.model.text_heads = 4
  c.model.cross_attention_resolutions = (16, 8)
  c.study = text.study
  c.study.num_samples = 2000
  return c
