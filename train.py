"""Trains a DDPM: python train.py --config configs/mnist_dup.py --workdir runs/mnist_dup [--config.x=v]."""
from minidiff import runtime

runtime.configure_cpu()  # before JAX is imported

import logging  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from minidiff.train import trainer  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/mnist_dup.py", "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", "runs/mnist_dup", "Where checkpoints, metrics and results go.")


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
  logging.getLogger("minidiff").setLevel(logging.INFO)
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
