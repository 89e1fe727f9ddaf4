"""GPU/TPU scale: CIFAR-10 32×32 at Gu et al.'s model size (128 channels, 2 res-blocks, batch 512).

Needs the tfds cifar10 prepared in data.data_dir (see README).
"""
import ml_collections

from configs import mnist_dup


def get_config() -> ml_collections.ConfigDict:
  c = mnist_dup.get_config()
  c.data.name = "cifar10"
  c.data.resolution = 32
  c.data.channels = 3
  c.data.n_unique_per_class = 200  # 2k unique images: Gu et al. see ~56% memorization (class-cond.)
  c.data.num_duplicated_per_class = 20
  c.data.dup_factor = 10
  c.data.duplicated_classes = ()
  c.data.n_unique_per_duplicated_class = 0  # every class the same size
  c.model.base_channels = 128
  c.model.channel_mults = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.num_groups = 32
  c.train.steps = 200_000
  c.train.batch_size = 512
  c.train.lr = 2e-4
  c.train.warmup_steps = 5000
  c.train.ema_decay = 0.9999
  c.train.log_every = 200
  c.train.checkpoint_every = 5000
  c.monitor.every = 5000
  c.monitor.num_samples = 256
  c.monitor.class_accuracy = False  # the evaluation classifier would train on CIFAR-10 first
  return c
