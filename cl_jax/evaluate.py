"""Entry point: python -m cl_jax.evaluate --workdir W

Restores the latest checkpoint of the run in W (with the config it saved) and
recomputes k-NN, linear probe, raw-pixel baselines, t-SNE, plots, results.json
and report.md. Under several processes, give every process the same flags as
cl_jax.train (--distributed, or --coordinator_address/--num_processes/--process_id).
"""

import json
import os
import sys

from absl import app
from absl import flags

from cl_jax import compilation_cache
from cl_jax import console
from cl_jax import default_config
from cl_jax import evaluator
from cl_jax import multihost

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run.", required=True)
console.define_flags()
multihost.define_flags()


def with_defaults(saved):
  """The saved config over today's defaults: a run written before a field existed gets the
  field's default (which is what that run did)."""
  config = default_config.get_config()

  def overlay(target, values):
    for key, value in values.items():
      if isinstance(value, dict) and key in target:
        overlay(target[key], value)
      else:
        target[key] = value
  overlay(config, saved)
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config_path = os.path.join(_WORKDIR.value, "config.json")
  if not os.path.exists(config_path):
    print(f"error: {config_path} not found; is {_WORKDIR.value} a cl_jax training workdir?",
          file=sys.stderr)
    sys.exit(2)
  with open(config_path, encoding="utf-8") as f:
    config = with_defaults(json.load(f))
  console.quiet_libraries(flags.FLAGS.verbose)
  multihost.initialize_from_flags()
  compilation_cache.enable(config)
  try:
    results = evaluator.evaluate_run(config, _WORKDIR.value)
  except evaluator.NoCheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if multihost.is_main_process():
    print(evaluator.results_table(results))
    print(f"wrote results.json, report.md, tsne.png, loss.png, knn.png to {_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)
