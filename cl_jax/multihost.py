"""JAX's multi-controller runtime: one process per host (or per GPU), all devices in one mesh.

Every process runs the same program on the same config. `initialize` must run
before anything else touches JAX's backends; after it, `jax.devices()` lists
the devices of every process and jitted computations over a mesh of them are
collective across processes (NCCL on GPU, ICI/DCN on TPU, Gloo on CPU).
"""

import itertools
import zlib

from absl import flags
import jax
from jax.experimental import multihost_utils
import numpy as np


def define_flags():
  """The command-line flags of a multi-process run (shared by cl_jax.train and cl_jax.evaluate)."""
  flags.DEFINE_bool(
      "distributed", False, "Call jax.distributed.initialize() (implied by the three flags "
      "below); what they leave unset is auto-detected (TPU pod slice, SLURM, Open MPI).")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, reachable from every process.")
  flags.DEFINE_integer("num_processes", None, "How many processes in all.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 .. n-1.")


def initialize_from_flags():
  """Joins the cluster if `define_flags`' flags ask for it; call before anything touches JAX."""
  values = flags.FLAGS
  cluster = (values.coordinator_address, values.num_processes, values.process_id)
  if values.distributed or any(value is not None for value in cluster):
    initialize(*cluster)


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


def preemption_requested(counter):
  """True on every process, at the same `counter`, once any process got SIGTERM.

  JAX's preemption sync (set up by `jax.distributed.initialize`) agrees on the
  counter, so that all processes save the same checkpoint (a collective) and
  stop. The counter must go up by one between calls (the trainer counts calls).
  """
  return multihost_utils.reached_preemption_sync_point(counter)


# Restore verdicts, ordered by severity (see checkpointing.Checkpointer.restore_latest).
OK, CORRUPT, ERROR = 0, 1, 2


def worst_verdict(verdict):
  """The most severe of every process's `verdict` (each process passes its own)."""
  assert verdict in (OK, CORRUPT, ERROR), verdict
  if not is_multiprocess():
    return verdict
  return int(np.max(multihost_utils.process_allgather(np.int32(verdict))))


def assert_same(values, message):
  """Raises on every process unless all processes pass equal `values` (a list of ints)."""
  if is_multiprocess():
    digest = np.uint32(zlib.crc32(repr(list(values)).encode()))
    multihost_utils.assert_equal(digest, f"{message}: {list(values)} on process "
                                 f"{jax.process_index()}")


_barriers = itertools.count()


def wait_for_every_process(name, timeout_seconds=7200):
  """A barrier on JAX's coordination service (no device collective, so no collective
  time-out): for processes that wait while process 0 alone works (the evaluation).
  Falls back to a device barrier where no distributed client exists."""
  if not is_multiprocess():
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  (what Orbax uses too)
  client = distributed.global_state.client
  if client is None:
    barrier(name)
    return
  client.wait_at_barrier(f"cl_jax_{name}_{next(_barriers)}", timeout_in_ms=timeout_seconds * 1000)
