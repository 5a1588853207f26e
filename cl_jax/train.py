"""Entry point: python -m cl_jax.train --config configs/mnist.py [--workdir runs/mnist]

The workdir defaults to runs/<config file name> under the current directory.

Several processes (hosts or GPUs): add --distributed (auto-detected on TPU pod
slices, SLURM, Open MPI) or --coordinator_address/--num_processes/--process_id;
see the README's multi-host section.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from cl_jax import checkpointing
from cl_jax import compilation_cache
from cl_jax import config_validation
from cl_jax import console
from cl_jax import data
from cl_jax import evaluator
from cl_jax import multihost
from cl_jax import trainer

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs and results; default: runs/<config file "
    "name> (runs/mnist for configs/mnist.py) under the current directory.")
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.mark_flag_as_required("config")
console.define_flags()
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


def default_workdir(config_path):
  """runs/<config file name without .py>; `file.py:arg` config strings name the file."""
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("runs", name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_libraries(flags.FLAGS.verbose)
  multihost.initialize_from_flags()  # before anything else touches JAX's backends
  compilation_cache.enable(flags.FLAGS.config)
  workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]))
  if multihost.is_main_process():
    print(f"workdir: {os.path.abspath(workdir)}", file=sys.stderr)
  try:
    results = trainer.train_and_evaluate(flags.FLAGS.config, workdir)
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
  if multihost.is_main_process():
    print("\n".join(evaluator.summary(results, os.path.abspath(workdir), flags.FLAGS.config)))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
