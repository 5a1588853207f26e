"""JAX's multi-controller runtime: one process per host (or per GPU), all devices in one mesh.

Every process runs the same program on the same config. `initialize` must run
before anything else touches JAX's backends; after it, `jax.devices()` lists
the devices of every process and jitted computations over a mesh of them are
collective across processes (NCCL on GPU, ICI/DCN on TPU, Gloo on CPU).
"""

import itertools
import os
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
  flags.DEFINE_string(
      "local_device_ids", "", "The GPUs this process drives, as ordinals among those it "
      "sees: \"\" = automatic (see multihost.local_device_ids), \"all\" = every GPU it sees "
      "(one process per host under SLURM or Open MPI), or a list such as 0,1.")


# The variables that restrict which GPUs a process sees (NVIDIA, AMD).
VISIBLE_DEVICES_ENV = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


# The variables through which a cluster tells a process its rank on its host.
LOCAL_RANK_ENV = ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")


def local_device_ids(flag_value, environ=None):
  """The `local_device_ids` to pass to `jax.distributed.initialize`.

  "all": [] (no restriction: every device the process sees). A list: those ordinals.
  "" (automatic), by what the process sees (the first of VISIBLE_DEVICES_ENV that is set):
  - JAX_LOCAL_DEVICE_IDS set, no GPU visible ("", "-1", SLURM's "NoDevFiles") or no
    variable set: None, JAX's default (under SLURM and Open MPI the task's local rank,
    right for one process per GPU on a host whose every GPU each task sees);
  - exactly one GPU: [0], its only ordinal (`srun --gpus-per-task=1`, where JAX's default
    would ask for ordinal SLURM_LOCALID, which does not exist there);
  - a local rank at or past the number of GPUs it sees: [] (each task was given GPUs of
    its own, e.g. `--gpus-per-task=2`, and JAX's default would again be out of range).
  """
  environ = os.environ if environ is None else environ
  if flag_value == "all":
    return []
  if flag_value:
    return [int(v) for v in flag_value.split(",")]
  if environ.get("JAX_LOCAL_DEVICE_IDS"):
    return None
  for name in VISIBLE_DEVICES_ENV:
    if name not in environ:
      continue
    visible = [v for v in environ[name].split(",") if v.strip() not in ("", "-1", "NoDevFiles")]
    if not visible:
      return None
    if len(visible) == 1:
      return [0]
    ranks = [int(environ[r]) for r in LOCAL_RANK_ENV if environ.get(r, "").isdigit()]
    if ranks and ranks[0] >= len(visible):
      return []
    return None
  return None


def initialize_from_flags():
  """Joins the cluster if `define_flags`' flags ask for it; call before anything touches JAX."""
  values = flags.FLAGS
  cluster = (values.coordinator_address, values.num_processes, values.process_id)
  if values.distributed or any(value is not None for value in cluster):
    initialize(*cluster, local_device_ids(values.local_device_ids))


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               device_ids=None):
  """Calls `jax.distributed.initialize`; arguments left None are auto-detected.

  Auto-detection covers TPU pod slices, SLURM and Open MPI; elsewhere pass all
  three (the coordinator is process 0's `host:port`, reachable by every process).
  `device_ids`: `local_device_ids`' result.
  """
  # Only the CPU backend reads this; it gives CPU-only clusters (and the localhost
  # test) cross-process collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=device_ids)


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


def agree(flags_of_main):
  """Process 0's list of booleans, on every process (a decision all must take together)."""
  if not is_multiprocess():
    return list(flags_of_main)
  values = multihost_utils.broadcast_one_to_all(np.asarray(flags_of_main, np.int32))
  return [bool(v) for v in np.asarray(values)]


def assert_same(values, message):
  """Raises on every process unless all processes pass equal `values` (a list of ints)."""
  if is_multiprocess():
    digest = np.uint32(zlib.crc32(repr(list(values)).encode()))
    multihost_utils.assert_equal(digest, f"{message}: {list(values)} on process "
                                 f"{jax.process_index()}")


_barriers = itertools.count()


class MainProcessFailed(RuntimeError):
  """Process 0 raised in work the other processes were waiting for."""


def on_main_process(name, work, timeout_seconds=7200):
  """Runs `work()` on process 0 while the others wait; returns its result there, None on
  the others. If `work` raises on process 0, it re-raises there and every other process
  raises MainProcessFailed, rather than waiting at a barrier process 0 never reaches.

  The wait is a barrier of JAX's coordination service and the outcome a key in its
  key-value store: no device collective, so no collective time-out (the evaluation takes
  minutes).
  """
  if not is_multiprocess():
    return work()
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  (what Orbax uses too)
  client = distributed.global_state.client  # several processes: jax.distributed made one
  key = f"cl_jax_{name}_{next(_barriers)}"
  timeout_ms = timeout_seconds * 1000
  if is_main_process():
    try:
      result = work()
    except BaseException as e:
      client.key_value_set(key, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")
      client.wait_at_barrier(key, timeout_in_ms=timeout_ms)
      raise
    client.key_value_set(key, "ok")
    client.wait_at_barrier(key, timeout_in_ms=timeout_ms)
    return result
  client.wait_at_barrier(key, timeout_in_ms=timeout_ms)
  outcome = client.blocking_key_value_get(key, timeout_ms)
  if outcome != "ok":
    raise MainProcessFailed(f"process 0 failed in {name}: {outcome}")
  return None
