"""A tiny text-conditioned variant for tests: 8×8, one captioned image repeated among ten others."""
import ml_collections

from configs import mnist_text


def get_config() -> ml_collections.ConfigDict:
  c = mnist_text.get_config()
  c.data.resolution = 8
  c.data.n_unique_per_class = 1
  c.data.num_duplicated_per_class = 1
  c.data.dup_factor = 4
  c.data.duplicated_classes = (3,)  # one unique caption, on a "3"; nine class-captioned images
  c.model.base_channels = 8
  c.model.channel_mults = (1, 2)
  c.model.attention_resolutions = (4,)
  c.model.cross_attention_resolutions = (4,)
  c.model.num_groups = 4
  c.model.vocab_size = 64
  c.model.text_dim = 16
  c.model.text_layers = 1
  c.diffusion.T = 100
  c.train.steps = 300
  c.train.batch_size = 16
  c.train.warmup_steps = 10
  c.train.log_every = 100
  c.train.checkpoint_every = 300
  c.sample.num_steps = 10
  c.study.guidance = "cfg,cfg+embedding_noise:lam=0.1,cfg+random_tokens:k=2"
  c.study.num_samples = 8
  c.study.classifier_epochs = 1
  return c
