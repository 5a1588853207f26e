"""Training on data streamed from the host, for datasets that do not fit on the devices:
each step's examples read by Grain from a `records.RecordSplit` (TFDS's ArrayRecord files),
each process reading only its own devices' share of the global batch, prefetched to them.

`placement` chooses between this and the default (`trainer.OnDeviceTraining`: the whole
pre-training split on every device) by the rule of its docstring, or by config.
"""

import logging
import math
import os
import threading

import jax
import numpy as np

from cl_jax import data
from cl_jax import multihost
from cl_jax import train_step as train_step_lib

logger = logging.getLogger(__name__)

PLACEMENTS = ("auto", "device", "stream")
# "auto" streams a pre-training split larger than this fraction of one device's memory: the
# on-device path holds a copy on every device beside the parameters, optimizer state and
# activations.
AUTO_DEVICE_FRACTION = 0.25


def device_memory_bytes(device):
  """The memory of `device` (its allocator's limit), or the host's where it reports none
  (a CPU, whose arrays live in host memory)."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (backends without it raise)
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def pretraining_bytes(info, config):
  """The bytes of the pre-training images (uint8) as the dataset's metadata `info` counts
  them: the training split, `unlabelled_split`, at most `max_train_examples`; 0 before the
  dataset is prepared (its sizes are unknown then)."""
  count = info.split_sizes.get("train", 0)
  if config.unlabelled_split:
    count += info.split_sizes.get(config.unlabelled_split, 0)
  if config.max_train_examples >= 0:
    count = min(count, config.max_train_examples)
  return count * math.prod(info.image_shape)


def placement(config, data_dir, devices):
  """config.data_placement, with "auto" resolved, on every process alike (process 0's
  choice): "stream" where the pre-training images take more than AUTO_DEVICE_FRACTION of the
  memory of this process's first device (`device_memory_bytes`) and the dataset is prepared
  as ArrayRecord files (TFDS's default, TFRecord, cannot be read example by example: a
  warning then, and "device" as before), else "device". Raises ConfigError where "auto"
  would stream a config the streamed path cannot run (config_validation refuses those for
  "stream")."""
  if config.data_placement != "auto":
    return config.data_placement
  info = data.dataset_info(config.dataset, data_dir, config.image_size)
  size = pretraining_bytes(info, config)
  mine = next(d for d in devices if d.process_index == jax.process_index())
  too_large = size > AUTO_DEVICE_FRACTION * device_memory_bytes(mine)
  # Process 0 alone reads the files' format: an error elsewhere would leave it waiting.
  readable = (multihost.is_main_process() and too_large
              and data.is_array_record(data.prepared_builder(config.dataset, data_dir)))
  [stream] = multihost.agree([readable])
  if too_large and not stream and multihost.is_main_process():
    logger.warning("the pre-training images (%.1f GiB) take more than %.0f%% of a device's "
                   "memory, but %s is not prepared as ArrayRecord files, which streaming "
                   "reads: they go on the devices (README, \"Data larger than the devices' "
                   "memory\")", size / 2**30, 100 * AUTO_DEVICE_FRACTION, config.dataset)
  if stream and (config.parallel != "shard_map" or config.steps_per_call > 1):
    from cl_jax import config_validation  # pylint: disable=g-import-not-at-top  (imports this)
    raise config_validation.ConfigError(
        f"config.data_placement='auto': the pre-training images ({size / 2**30:.1f} GiB) "
        f"take more than {AUTO_DEVICE_FRACTION:.0%} of a device's memory, so they would be "
        "streamed, which needs parallel='shard_map' and steps_per_call 0 or 1 (or set "
        "data_placement='device')")
  return "stream" if stream else "device"


class StreamedTraining:
  """The data-parallel train step over a RecordSplit, one step a call (each batch comes from
  the host): the steps of `trainer.OnDeviceTraining`, with the same permutation of each
  epoch, the same batch at each step and the same keys, so a streamed run trains the
  parameters of an on-device run with one step per call.

  Step s's batch is a pure function of s, read through a Grain `MapDataset` over the step
  numbers (random access): resuming at any step needs no reader state beyond the step the
  checkpoint holds. Each process reads the rows of its own devices only and puts them there;
  Grain's threads read up to `stream_prefetch_steps` steps ahead (at most
  `stream_read_threads` of them at once). Each epoch's permutation is dispatched on the
  device from the training loop's thread when the epoch before it starts, so that the
  readers find it done.
  """

  steps_per_call = 1

  def __init__(self, config, devices, train, schedule_steps):
    import grain  # pylint: disable=g-import-not-at-top  (the streamed path only)
    self.batch_size = config.batch_size
    self.train = train
    self.steps_per_epoch = len(train) // self.batch_size
    self.schedule_steps = schedule_steps
    self.dp = train_step_lib.data_parallel(config, devices, schedule_steps)
    self._sharding = self.dp.batch_sharding()
    # (first row, end row, device) of this process's devices in the global batch.
    indices = self._sharding.addressable_devices_indices_map((self.batch_size,))
    self._shards = sorted((index[0].indices(self.batch_size)[:2] + (device,)
                           for device, index in indices.items()), key=lambda s: s[0])
    self._read_options = grain.ReadOptions(num_threads=config.stream_read_threads,
                                           prefetch_buffer_size=config.stream_prefetch_steps)
    self._lock = threading.Lock()  # the readers and the loop share the permutations
    self._permutations = {}  # epoch: its permutation, on the device, then as NumPy
    self._shuffle_key = None
    self._batches, self._next_step = None, None

  def _dispatch_permutation(self, epoch):
    """Starts epoch `epoch`'s permutation on the device (not waiting for it) unless it is
    known. Called with the lock held."""
    if epoch not in self._permutations:
      self._permutations[epoch] = train_step_lib.epoch_permutation(
          self._shuffle_key, epoch, len(self.train))

  def _permutation(self, epoch):
    """Epoch `epoch`'s permutation as NumPy (a reader's call)."""
    with self._lock:
      self._dispatch_permutation(epoch)  # already there: the loop dispatches them ahead
      permutation = self._permutations[epoch]
    if not isinstance(permutation, np.ndarray):
      permutation = np.asarray(permutation)  # waits for the device outside the lock
      with self._lock:
        if epoch in self._permutations:  # not forgotten meanwhile
          self._permutations[epoch] = permutation
    return permutation

  def _local_batch(self, step):
    """(step, [this process's shard of step `step`'s batch on each of its devices])."""
    first = step % self.steps_per_epoch * self.batch_size
    rows = self._permutation(step // self.steps_per_epoch)[first:first + self.batch_size]
    shards = []
    for start, stop, device in self._shards:
      mine = rows[start:stop]
      shards.append(jax.device_put({"image": self.train.read(mine),
                                    "label": self.train.labels[mine],
                                    "index": mine.astype(np.int32)}, device))
    return step, shards

  def steps_this_call(self, step, end, boundaries):
    """One: every call is one step."""
    del step, end, boundaries
    return 1

  def run(self, state, step, count, shuffle_key, augment_key):
    """Runs global step `step` (count must be 1; the calls' steps follow one another);
    returns (state, metrics with a leading axis of 1), as OnDeviceTraining.run."""
    assert count == 1 and self._next_step in (None, step), (count, step, self._next_step)
    epoch = step // self.steps_per_epoch
    if self._next_step is None:
      self._shuffle_key = shuffle_key
    if step % self.steps_per_epoch == 0 or self._next_step is None:
      # The readers are at this step's epoch or later, up to `ahead` epochs on.
      ahead = -(-self._read_options.prefetch_buffer_size // self.steps_per_epoch)
      with self._lock:
        for old in [e for e in self._permutations if e < epoch]:
          del self._permutations[old]
        for later in range(epoch, epoch + 1 + ahead):
          self._dispatch_permutation(later)
    if self._batches is None:
      import grain  # pylint: disable=g-import-not-at-top  (the streamed path only)
      steps = grain.MapDataset.range(step, self.schedule_steps).map(self._local_batch)
      self._batches = iter(steps.to_iter_dataset(self._read_options))
    read_step, shards = next(self._batches)
    assert read_step == step, (read_step, step)
    self._next_step = step + 1
    batch = {key: jax.make_array_from_single_device_arrays(
        (self.batch_size,) + shards[0][key].shape[1:], self._sharding,
        [shard[key] for shard in shards]) for key in shards[0]}
    state, metrics = self.dp.step(state, batch, jax.random.fold_in(augment_key, step))
    return state, jax.tree.map(lambda m: m[None], metrics)

  def close(self):
    """Stops the readers (they may be reading steps past the last one run)."""
    if self._batches is not None:
      self._batches.close()
