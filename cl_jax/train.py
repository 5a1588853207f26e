"""Entry point: python -m cl_jax.train --config configs/mnist.py --workdir runs/mnist"""

from absl import app
from absl import flags
from ml_collections import config_flags

from cl_jax import trainer

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.",
                               required=True)
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  trainer.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
