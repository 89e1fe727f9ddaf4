"""A tiny text-conditioned variant for tests: 8×8; one image with a unique caption repeated ×8 among
nine class-captioned images; one UNet level, so the train step compiles fast; trained (1,000 steps)
until CFG reproduces the captioned image."""
import ml_collections

from configs import mnist_text


def get_config() -> ml_collections.ConfigDict:
  c = mnist_text.get_config()
  c.data.resolution = 8
  c.data.n_unique_per_class = 1
  c.data.num_duplicated_per_class = 1
  c.data.dup_factor = 8
  c.data.duplicated_classes = (3,)  # one unique caption, on a "3"; nine class-captioned images
  c.model.base_channels = 16
  c.model.channel_mults = (1,)  # one level: a small graph, so the train step compiles quickly
  c.model.attention_resolutions = ()  # (the middle block keeps its self-attention)
  c.model.cross_attention_resolutions = (8,)
  c.model.num_groups = 4
  c.model.vocab_size = 64
  c.model.text_dim = 16
  c.model.text_layers = 1
  # T stays 1000: with the linear β schedule a short T leaves signal at t = T − 1 (ᾱ ≈ 0.37 at
  # T = 100), so samples started from pure noise would not reproduce anything.
  c.train.steps = 1000
  c.train.batch_size = 16
  c.train.lr = 2e-3
  c.train.warmup_steps = 10
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.sample.num_steps = 10
  # One compiled sampler for all three (same strategy; the embedding-noise path would compile again).
  c.study.guidance = "cfg:w=3,cfg:w=3+repeat_words:k=2,cfg:w=3+random_tokens:k=2"
  c.study.num_samples = 8
  c.study.classifier_epochs = 1
  return c
