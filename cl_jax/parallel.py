"""Maps one per-device step over local devices with `jax.shard_map` or `jax.pmap`.

The per-device step is written once against the named axis `AXIS` (it may use
`lax.pmean`, `lax.all_gather`, `lax.axis_index`). Both mappings run the same
per-device code on the same shards, so they give the same numbers.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"
MODES = ("shard_map", "pmap")


def select_devices(config):
  """The run's devices: every process's when several processes run; else the first
  `config.num_devices` local ones (-1 = all). Training and evaluation both use these.

  A `num_devices` above the local count raises ConfigError. (JAX still preallocates memory
  on every GPU the process sees: hide the others with CUDA_VISIBLE_DEVICES.)
  """
  if jax.process_count() > 1:
    return jax.devices()
  if config.num_devices > jax.local_device_count():
    from cl_jax import config_validation  # pylint: disable=g-import-not-at-top  (imports this)
    raise config_validation.ConfigError(
        f"config.num_devices={config.num_devices}: only {jax.local_device_count()} local "
        f"{jax.local_devices()[0].platform} device(s) here")
  return local_devices(config)


def local_devices(config):
  """Where this process evaluates: its share of the run's devices (`select_devices`), or,
  on a machine with fewer than `config.num_devices`, all of its own."""
  devices = jax.local_devices()
  if jax.process_count() > 1 or config.num_devices <= 0:
    return devices
  return devices[:config.num_devices]


class DataParallel:
  """Places state and batches on `devices` and runs a mapped per-device step.

  The state is replicated; batches are split along their leading axis. State
  and batches go in and come out as ordinary host-shaped pytrees (no device
  axis), so callers never see which mapping is used.
  """

  def __init__(self, per_device_step, mode, devices):
    """`per_device_step(state, batch, rng) -> (state, metrics)` uses axis `AXIS`."""
    if mode not in MODES:
      raise ValueError(f"parallel={mode!r}; allowed: {', '.join(MODES)}")
    self.mode = mode
    self.devices = list(devices)
    self.num_devices = len(self.devices)
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self._replicated = NamedSharding(self.mesh, P())
    self._split = NamedSharding(self.mesh, P(AXIS))
    if mode == "shard_map":
      # check_vma=False keeps pmap's semantics: gradients taken inside the step
      # are per-device partial gradients, reduced explicitly by the step.
      self.mapped_step = jax.shard_map(per_device_step, mesh=self.mesh,
                                       in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()),
                                       check_vma=False)
      self._step = jax.jit(self.mapped_step, donate_argnums=0)
    else:
      self._step = jax.pmap(per_device_step, axis_name=AXIS, in_axes=(0, 0, None),
                            devices=self.devices, donate_argnums=0)

  def put_state(self, state):
    """Replicates a host pytree on the devices."""
    if self.mode == "shard_map":
      return jax.device_put(state, self._replicated)
    # pmap wants one copy per device stacked along a leading device axis.
    stacked = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x)), state)
    return jax.device_put(stacked, self._split)

  def get_state(self, state):
    """Returns the replicated state as one host copy (NumPy leaves)."""
    if self.mode == "pmap":
      state = jax.tree.map(lambda x: x[0], state)
    return jax.device_get(state)

  def batch_sharding(self):
    """Sharding for a global batch produced on device (shard_map), else None."""
    return self._split if self.mode == "shard_map" else None

  def replicated_sharding(self):
    """Sharding that replicates an array on every device (shard_map), else None."""
    return self._replicated if self.mode == "shard_map" else None

  def step(self, state, batch, rng):
    """Runs one mapped step on a global batch; returns (state, metrics of device 0)."""
    if self.mode == "pmap":
      batch = jax.device_put(jax.tree.map(
          lambda x: x.reshape((self.num_devices, -1) + x.shape[1:]), batch), self._split)
      state, metrics = self._step(state, batch, rng)
      return state, jax.tree.map(lambda x: x[0], metrics)
    return self._step(state, batch, rng)
