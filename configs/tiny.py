"""A tiny variant for tests and debugging: seconds per run on a CPU."""
import ml_collections

from configs import mnist_dup


def get_config() -> ml_collections.ConfigDict:
  c = mnist_dup.get_config()
  c.data.resolution = 8
  c.data.n_unique_per_class = 4
  c.data.num_duplicated_per_class = 1
  c.data.dup_factor = 3
  c.data.duplicated_classes = (0, 1)
  c.data.n_unique_per_duplicated_class = 0  # every class the same size
  c.model.base_channels = 8
  c.model.channel_mults = (1, 2)
  c.model.attention_resolutions = (4,)
  c.model.num_groups = 4
  c.diffusion.T = 100
  c.train.steps = 6
  c.train.batch_size = 8
  c.train.warmup_steps = 2
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  c.sample.num_steps = 5
  c.study.guidance = "none,cfg,dynamic"
  c.study.num_samples = 12
  c.study.classifier_epochs = 1
  c.monitor.every = 0  # off in tests (tests/test_monitor.py turns it on)
  c.monitor.class_accuracy = False
  return c
