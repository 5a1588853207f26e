"""JAX's multi-controller runtime: one process per host (or per GPU), all devices in one mesh.

Every process runs the same program on the same config. `initialize` must run
before anything else touches JAX's backends; after it, `jax.devices()` lists
the devices of every process and jitted computations over a mesh of them are
collective across processes (NCCL on GPU, ICI/DCN on TPU, Gloo on CPU).
"""

import jax
from jax.experimental import multihost_utils


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Calls `jax.distributed.initialize`; arguments left None are auto-detected.

  Auto-detection covers TPU pod slices, SLURM and Open MPI; elsewhere pass all
  three (the coordinator is process 0's `host:port`, reachable by every process).
  """
  # Only the CPU backend reads this; it gives CPU-only clusters (and the localhost
  # test) cross-process collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def is_multiprocess():
  return jax.process_count() > 1


def is_main_process():
  """Process 0 writes logs, plots, results and the report."""
  return jax.process_index() == 0


def barrier(name):
  """Waits until every process reaches the barrier `name` (no-op in a single process)."""
  if is_multiprocess():
    multihost_utils.sync_global_devices(name)


def preemption_requested(step):
  """True on every process, at the same step, once any process got SIGTERM.

  JAX's preemption sync (set up by `jax.distributed.initialize`) agrees on the
  step, so that all processes save the same checkpoint (a collective) and stop.
  """
  return multihost_utils.reached_preemption_sync_point(step)
