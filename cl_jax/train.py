"""Entry point: python -m cl_jax.train --config configs/mnist.py --workdir runs/mnist

Several processes (hosts or GPUs): add --distributed (auto-detected on TPU pod
slices, SLURM, Open MPI) or --coordinator_address/--num_processes/--process_id;
see the README's multi-host section.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from cl_jax import checkpointing
from cl_jax import config_validation
from cl_jax import data
from cl_jax import multihost
from cl_jax import trainer

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.",
                               required=True)
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
multihost.define_flags()


def parse_flags(argv):
  """absl's parser, with bad flags and unknown config keys as one line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError) as e:  # config_flags: --config.<unknown key>=...
    message = f"unknown config key {e} (see cl_jax/default_config.py for the fields)"
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  multihost.initialize_from_flags()  # before anything else touches JAX's backends
  try:
    trainer.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  except (config_validation.ConfigError, data.DatasetNotPreparedError,
          checkpointing.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except trainer.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except trainer.Preempted as e:
    print(f"stopped: {e}; re-run the same command to resume", file=sys.stderr)
    sys.exit(128 + e.signum)  # the shell's convention for death by that signal


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
