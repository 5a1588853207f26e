"""The training loop: `train_and_evaluate(config, workdir)`, callable from notebooks too."""

import contextlib
import functools
import hashlib
import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from cl_jax import checkpointing
from cl_jax import config_validation
from cl_jax import data
from cl_jax.data import records
from cl_jax import default_config
from cl_jax import evaluation
from cl_jax import evaluator
from cl_jax import methods
from cl_jax import metric_logging
from cl_jax import models
from cl_jax import multihost
from cl_jax import online_probe
from cl_jax import parallel
from cl_jax import streaming
from cl_jax import train_step as train_step_lib

logger = logging.getLogger(__name__)


def params_sha256(params):
  """SHA-256 of the parameters' bytes in a fixed (path-sorted) order."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


class KnnMonitor:
  """Online cosine k-NN on held subsets, computed on device with the current encoder: the
  first `monitor_bank_size` images of `bank` (the training images after the validation
  split) vote for the first `monitor_query_size` of `queries` (the validation split; never
  the test split, since runs are selected on this monitor).

  Also on the projections (the loss's space) and, once, on the raw pixels of the
  same subsets: a run whose features sit below the pixels is not learning.
  """

  def __init__(self, model, bank, queries, config, devices):
    bank = bank[:config.monitor_bank_size]
    queries = queries[:config.monitor_query_size]
    self.model, self.devices, self.config = model, devices, config
    self.bank_images, self.bank_labels = bank.images, jnp.asarray(bank.labels)
    self.query_images, self.query_labels = queries.images, queries.labels
    self.num_classes = int(max(bank.labels.max(), queries.labels.max())) + 1
    self._predict = jax.jit(evaluation.knn_predict_cosine, static_argnums=(3, 4))
    pixels = lambda images: data.to_float(images).reshape(len(images), -1)
    self.raw_pixels = self._accuracy(pixels(self.bank_images), pixels(self.query_images))

  def _accuracy(self, bank, queries):
    predictions = self._predict(bank, self.bank_labels, queries, self.config.knn_k,
                                self.num_classes)
    return float(np.mean(np.asarray(predictions) == self.query_labels))

  def accuracies(self, variables, probe_params=None):
    """{"knn_monitor": on the encoder's features, "knn_monitor_projection": on the
    projections, "knn_monitor_raw_pixels": on the pixels} for Flax `variables`, and
    "online_probe_monitor": the online probe's accuracy (with `probe_params`) on the same
    queries."""
    embed = functools.partial(evaluation.embed, self.model, variables,
                              batch_size=self.config.eval_batch_size, devices=self.devices)
    bank_features, bank_projections = embed(self.bank_images)
    query_features, query_projections = embed(self.query_images)
    accuracies = {"knn_monitor": self._accuracy(bank_features, query_features),
                  "knn_monitor_projection": self._accuracy(bank_projections, query_projections),
                  "knn_monitor_raw_pixels": self.raw_pixels}
    if probe_params is not None:
      accuracies["online_probe_monitor"] = online_probe.accuracy(probe_params, query_features,
                                                                 self.query_labels)
    return accuracies


def resolve_steps_per_call(config, steps_per_epoch, platform):
  """config.steps_per_call, with 0 (automatic) = one call per logged interval (the host
  reads metrics then anyway), at most an epoch; but one step per call on the devices'
  `platform` "cpu", where the same steps ran 1.8x slower inside the on-device loop than
  dispatched one by one (docs/performance.md)."""
  if config.steps_per_call > 0:
    return config.steps_per_call
  if platform == "cpu":
    return 1
  return max(1, min(config.log_every_steps, steps_per_epoch))


class OnDeviceTraining:
  """The data-parallel train step over a dataset held on the devices, several steps a call.

  Each epoch is a fresh permutation (from the shuffle key and the epoch); each
  step gathers its global batch on device, then runs the mapped train step
  with the key `fold_in(augment_key, step)`. `run` does up to `steps_per_call`
  consecutive steps of one epoch in one jitted call (a `fori_loop` on device:
  no Python dispatch or host sync between them), or with `steps_per_call=1` one
  jitted step. Nothing depends on earlier calls but the cached permutation, so
  any step can be run first (resuming).

  The loop's trip count is static (one program per count), as a while loop whose
  count is traced makes the GPU copy its predicate to the host and wait at every
  iteration; `steps_this_call` keeps the counts few: `steps_per_call` and powers of
  two below it.
  """

  def __init__(self, config, devices, images, labels, schedule_steps, steps_per_call=1):
    self.batch_size = config.batch_size
    self.num_examples = len(images)
    self.steps_per_epoch = self.num_examples // self.batch_size
    self.steps_per_call = steps_per_call
    self.dp = train_step_lib.data_parallel(config, devices, schedule_steps)
    self.data = jax.device_put({"image": images, "label": labels},
                               self.dp.replicated_sharding() or devices[0])
    self._select_batch = jax.jit(self._batch, out_shardings=self.dp.batch_sharding())
    self._run = None  # the on-device loop, for shard_map with several steps a call
    if self.dp.mode == "shard_map" and steps_per_call > 1:
      replicated = self.dp.replicated_sharding()
      self._run = jax.jit(self._run_steps, donate_argnums=0, static_argnums=4,
                          out_shardings=(replicated, replicated))
    self._epoch = self._permutation = None

  def _batch(self, data, permutation, step):
    index = jax.lax.dynamic_slice_in_dim(
        permutation, step % self.steps_per_epoch * self.batch_size, self.batch_size)
    return {"image": data["image"][index], "label": data["label"][index],
            "index": index.astype(jnp.int32)}

  def _run_steps(self, state, data, permutation, first_step, count, augment_key):
    """`count` (a Python int: the loop's trip count is static) steps from `first_step`;
    metrics [count]."""
    def one_step(state, step):
      batch = jax.lax.with_sharding_constraint(self._batch(data, permutation, step),
                                               self.dp.batch_sharding())
      return self.dp.mapped_step(state, batch, jax.random.fold_in(augment_key, step))
    shapes = jax.eval_shape(one_step, state, first_step)[1]
    buffers = jax.tree.map(lambda m: jnp.zeros((count,) + m.shape, m.dtype), shapes)

    def body(i, carry):
      state, buffers = carry
      state, metrics = one_step(state, first_step + i)
      return state, jax.tree.map(lambda b, m: b.at[i].set(m), buffers, metrics)
    return jax.lax.fori_loop(0, count, body, (state, buffers))

  def steps_this_call(self, step, end, boundaries):
    """How many steps the call starting at `step` runs: `steps_per_call`, or fewer where the
    call would pass `end`, the epoch's end or the next multiple of one of `boundaries`:
    then the largest power of two that stops short of all of them (the rest follows in
    later calls), so that at most 1 + log2(steps_per_call) loop programs are compiled."""
    stop = min(end, step + self.steps_per_call)
    for every in (self.steps_per_epoch, *boundaries):
      stop = min(stop, (step // every + 1) * every)
    count = stop - step
    if count < self.steps_per_call:
      count = 1 << (count.bit_length() - 1)
    return count

  def run(self, state, step, count, shuffle_key, augment_key):
    """Runs global steps step .. step + count - 1 (one epoch) on device-resident `state`;
    returns (state, metrics with a leading axis of `count`)."""
    epoch = step // self.steps_per_epoch
    assert 0 < count <= self.steps_per_call and (step + count - 1) // self.steps_per_epoch == epoch
    if epoch != self._epoch:
      self._epoch = epoch
      self._permutation = train_step_lib.epoch_permutation(shuffle_key, epoch,
                                                               self.num_examples)
    if self._run is not None:
      return self._run(state, self.data, self._permutation, np.int32(step), count, augment_key)
    # One dispatch per step: pmap (maintenance mode in JAX), and one step per call.
    every = []
    for s in range(step, step + count):
      batch = self._select_batch(self.data, self._permutation, s)
      state, metrics = self.dp.step(state, batch, jax.random.fold_in(augment_key, s))
      every.append(metrics)
    return state, jax.tree.map(lambda *m: jnp.stack(m), *every)

  def close(self):
    """Nothing to stop: the data are arrays on the devices (StreamedTraining has readers)."""


class NonFiniteError(FloatingPointError):
  """The loss or the gradient became NaN or Inf."""


class Preempted(RuntimeError):
  """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved."""

  def __init__(self, signum, step):
    super().__init__(f"{signal.Signals(signum).name} received; saved a checkpoint at step {step}")
    self.signum = signum


@contextlib.contextmanager
def stop_requests():
  """Yields `requested(call)`: the signal to stop for after call number `call` (0, 1, 2, ...
  on every process alike), or None; polled between calls of the training loop.

  One process: SIGTERM / SIGINT handlers set a flag (main thread only). Several
  processes: JAX's preemption sync point on SIGTERM, so that all stop after the
  same call (Python handlers would replace the one JAX installs for it). The
  sync point counts consecutive integers, hence calls rather than steps.
  """
  if multihost.is_multiprocess():
    yield lambda call: signal.SIGTERM if multihost.preemption_requested(call) else None
    return
  received = []
  handler = lambda signum, frame: received.append(signum)
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield lambda call: received[0] if received else None
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)


def check_finite(first_step, count, metrics):
  """Raises NonFiniteError naming the first of steps first_step + 1 .. first_step + count
  (numbered as logged: step s is the state after s updates) whose loss, gradient or
  parameters are not finite; `metrics` holds one row per step."""
  values = {k: np.asarray(v)[:count] for k, v in jax.device_get(metrics).items()}
  finite = np.all([np.isfinite(v) for v in values.values()], axis=0)
  if not finite.all():
    bad = int(np.argmin(finite))
    shown = ", ".join(f"{k}={float(v[bad])}" for k, v in sorted(values.items()))
    raise NonFiniteError(f"non-finite values at step {first_step + bad + 1}: {shown}; "
                         "stopped, the last good checkpoint is kept")


def load_training_data(config, data_dir, placement="device"):
  """(pre-training split, validation split, the rest of the training split) of
  config.dataset, as in-memory `data.Split`s (`placement` "device") or `records.RecordSplit`s
  ("stream"): the validation split is the first `validation_examples` training images;
  a method that reads labels pre-trains on the rest only, a label-free one on the whole
  training split, the validation split's labels hidden (-1: the online probe must not
  learn them), followed by `unlabelled_split`'s images (their labels, if the split has any,
  hidden too) if any; `max_train_examples` then keeps the first that many pre-training
  images."""
  load_for = records.load_for if placement == "stream" else data.load_for
  full = load_for(config, "train", data_dir)
  try:
    validation, rest = data.split_validation(full, config.validation_examples)
  except ValueError as e:
    raise config_validation.ConfigError(f"config.{e}") from e
  if methods.get(config.method).uses_labels:
    train = rest
  else:
    hidden = np.arange(len(full)) < len(validation)  # the validation split's rows
    train = full.with_labels(np.where(hidden, -1, full.labels))
  if config.unlabelled_split:
    train = train.concatenate(
        load_for(config, config.unlabelled_split, data_dir).unlabelled())
  if config.max_train_examples >= 0:
    train = train[:config.max_train_examples]
  if (config.online_probe_learning_rate > 0 and not np.any(train.labels >= 0)
      and multihost.is_main_process()):
    logger.warning("the online probe has no labelled pre-training image to learn from (the "
                   "first %d are the validation split's, labels hidden): it stays at chance",
                   config.validation_examples)
  return train, validation, rest


def num_classes(validation, rest):
  """The classes of the training split's labels (0 .. the largest): the online probe's
  outputs."""
  return int(max(validation.labels.max(initial=0), rest.labels.max(initial=0))) + 1


def check_resumable(workdir, config):
  """The fields that differ from the config WORKDIR's checkpoints were trained with
  ({field: (saved, now)}, empty for a new workdir); refuses (CheckpointError) to resume
  with any unless config.resume is "force"."""
  path = os.path.join(workdir, "config.json")
  if not (os.path.exists(path) and os.path.isdir(checkpointing.checkpoint_dir(workdir))):
    return {}
  with open(path, encoding="utf-8") as f:
    saved = f.read()
  differences = checkpointing.config_differences(saved, config, default_config.get_config())
  # The validation split changes nothing a label-free method trains on; one that reads
  # labels pre-trains without it, where a config saved before the field existed had none.
  saved_validation = json.loads(saved).get("validation_examples", 0)
  if (methods.get(config.method).uses_labels
      and saved_validation != config.validation_examples):
    differences["validation_examples"] = (saved_validation, config.validation_examples)
  if differences and config.resume != "force":
    raise checkpointing.CheckpointError(
        f"{workdir} holds a run of a different config ({describe(differences)}); use another "
        "workdir, or --config.resume=force to resume it anyway")
  return differences


def describe(differences):
  return "; ".join(f"{k}: {saved!r} -> {now!r}" for k, (saved, now) in differences.items())


def write_config(workdir, config, restored_step, differences):
  """config.json (process 0), once the restore it describes has succeeded; a resume that
  changed fields (resume=force) is also appended to config_changes.jsonl."""
  if not multihost.is_main_process():
    return
  if restored_step is not None and differences:
    logger.warning("resumed step %d with a changed config: %s", restored_step,
                   describe(differences))
    with open(os.path.join(workdir, "config_changes.jsonl"), "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": restored_step, "changes": {
          k: {"saved": saved, "now": now} for k, (saved, now) in differences.items()}}) + "\n")
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json(indent=2))


def finished_run(config, workdir, step, state, trained_seconds):
  """A re-run of a run already at (or past) the step this config stops at: nothing is
  trained and nothing rewritten (config.json included), except what is missing: a
  training record of this checkpoint (a run stopped between its last checkpoint and its
  record) and its evaluation (none yet of this step, or none of the validation split).
  Every process takes this path together and follows process 0's reading of results.json
  (the evaluation is a collective). Returns the results."""
  path = os.path.join(workdir, "results.json")
  results = evaluator.read_json(path)
  sha256 = params_sha256(state.params)
  stale_record = results.get("params_sha256") != sha256
  needs_evaluation = config.evaluate_at_end and (
      stale_record or results.get("eval_step") != step
      or (config.validation_examples > 0 and "validation_knn" not in results))
  stale_record, needs_evaluation = multihost.agree([stale_record, needs_evaluation])
  if multihost.is_main_process():
    logger.warning("%s is already trained to step %d: nothing to train%s", workdir, step,
                   "; writing its missing training record" if stale_record else
                   "; its training record is kept")
    if stale_record:
      results = {"steps": step, "params_sha256": sha256, "train_seconds": trained_seconds,
                 "resumed_from_step": step}
      evaluator.write_json(path, results)
  multihost.barrier("finished_run_recorded")
  if needs_evaluation:
    return evaluator.evaluate_run(config, workdir, progress=config.progress_bar)
  return results if multihost.is_main_process() else evaluator.read_json(path)


def train_and_evaluate(config, workdir):
  """Trains (resuming from WORKDIR's latest checkpoint if any); returns the results dict.

  Writes WORKDIR/checkpoints, metrics.jsonl, tensorboard/ and results.json. Under
  jax.distributed every process calls it with the same config and a shared WORKDIR.
  A workdir already trained to its last step is left as it is (`finished_run`).
  """
  # Checks, before any data or compilation.
  devices = parallel.select_devices(config)
  config_validation.validate(config, len(devices), default_config.get_config(),
                             jax.process_count())
  config_validation.check_workdir(workdir)
  differences = check_resumable(workdir, config)
  multihost.barrier("config_checked")  # before process 0 rewrites config.json
  is_main = multihost.is_main_process()

  # Data and schedule.
  data_dir = config.data_dir or data.default_data_dir()
  placement = streaming.placement(config, data_dir, devices)
  train, validation, rest = load_training_data(config, data_dir, placement)
  steps_per_epoch = len(train) // config.batch_size
  if steps_per_epoch == 0:
    raise config_validation.ConfigError(
        f"config.batch_size={config.batch_size}: larger than the training set "
        f"({len(train)} examples)")
  # num_epochs sets the schedule's length (cosine decay, BYOL's momentum); max_steps
  # only says where this invocation stops, so a run stopped early and resumed without
  # it is the uninterrupted run. A resumed run keeps the schedule its checkpoint saved.
  schedule_steps = config.num_epochs * steps_per_epoch

  # Model and state, restored from the latest checkpoint if there is one.
  model = models.create_model(config)
  init_key, shuffle_key, augment_key = train_step_lib.run_keys(config.seed)
  state = train_step_lib.create_train_state(
      model, train_step_lib.create_optimizer(config, steps_per_epoch, schedule_steps), init_key,
      train.image_shape, config, num_classes=num_classes(validation, rest))
  base_key = jax.random.key_data(jnp.stack([shuffle_key, augment_key]))
  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  restored_step, tree = checkpointer.restore_latest(checkpointing.state_to_tree(
      jax.device_get(state), jax.random.wrap_key_data(base_key), schedule_steps))
  trained_seconds = 0.0  # in earlier segments of this run; None: not recorded there
  if tree is not None:
    state, keys, saved_schedule = checkpointing.tree_to_state(tree, state)
    base_key = jax.random.key_data(keys)
    trained_seconds = checkpointing.saved_train_seconds(tree)
    if state.probe is not None and checkpointing.PROBE_KEY not in tree:
      state = state.replace(probe={**state.probe, "start_step": np.int32(restored_step)})
      if is_main:
        logger.warning("the checkpoint predates the online probe: it starts at step %d",
                       restored_step)
    if saved_schedule is not None and saved_schedule != schedule_steps:
      logger.warning("the checkpoint's schedule is %d steps, the config's %d: keeping the "
                     "checkpoint's", saved_schedule, schedule_steps)
      schedule_steps = saved_schedule
      state = state.replace(tx=train_step_lib.create_optimizer(config, steps_per_epoch,
                                                               schedule_steps))
    if is_main:
      logger.info("resumed from step %d", restored_step)
  start_step = int(state.step)
  total_steps = schedule_steps if config.max_steps < 0 else min(schedule_steps, config.max_steps)
  if start_step >= total_steps:
    checkpointer.close()
    return finished_run(config, workdir, start_step, state, trained_seconds)
  write_config(workdir, config, restored_step, differences)
  shuffle_key, augment_key = jax.random.wrap_key_data(base_key)

  # The train step on the devices, the online monitor and the logs.
  if placement == "stream":
    training = streaming.StreamedTraining(config, devices, train, schedule_steps)
  else:
    training = OnDeviceTraining(config, devices, train.images, train.labels, schedule_steps,
                                resolve_steps_per_call(config, steps_per_epoch,
                                                       devices[0].platform))
  dp = training.dp
  state = dp.put_state(jax.device_get(state))

  monitor, monitor_every = None, config.eval_every_epochs * steps_per_epoch
  if config.eval_every_epochs > 0 and is_main:  # on process 0's own devices: no collectives
    local = [d for d in devices if d.process_index == jax.process_index()]
    monitor = KnnMonitor(model, rest, validation, config, local)
  # Calls end where the host has something to do: a log line, a checkpoint, a monitor point.
  boundaries = [config.log_every_steps, config.checkpoint_every_steps] + (
      [monitor_every] if monitor_every else [])

  writer = metric_logging.MetricWriter(workdir, start_step)
  progress = tqdm(total=total_steps, initial=start_step, disable=not (config.progress_bar and is_main),
                  unit="step", dynamic_ncols=True)
  first_call_end = time.perf_counter()
  train_start = time.perf_counter()
  first_call_steps = 0
  # The last logged loss, and when and at which step the last log line was written.
  log = {"loss": float("nan"), "time": time.perf_counter(), "step": start_step}
  pending = None  # (first step, count, metrics) of a call not read yet

  def finish(first_step, count, metrics):
    """Reads a call's metrics (waiting for it): writes its log line where it ends at a log
    step, then refuses non-finite values."""
    done = first_step + count
    if done % config.log_every_steps == 0 or done == total_steps:
      last = {k: float(v[count - 1]) for k, v in jax.device_get(metrics).items()}
      now = time.perf_counter()
      images_per_second = (done - log["step"]) * config.batch_size / (now - log["time"])
      log.update(loss=last["loss"], time=now, step=done)
      writer.write(done, {**last, "epoch": done / steps_per_epoch,
                          "images_per_second": images_per_second})
      progress.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{images_per_second:.0f}")
    check_finite(first_step, count, metrics)

  def save(step):
    checkpointer.save(step, checkpointing.state_to_tree(
        dp.get_state(state), jax.random.wrap_key_data(base_key), schedule_steps,
        (trained_seconds or 0.0) + time.perf_counter() - train_start))

  # The loop.
  try:
    with stop_requests() as stop_requested:
      step, call = start_step, 0
      while step < total_steps:
        count = training.steps_this_call(step, total_steps, boundaries)
        state, metrics = training.run(state, step, count, shuffle_key, augment_key)
        if pending:  # the call before this one, read while this one runs: no stall
          finish(*pending)
        pending = (step, count, metrics)
        done = step + count
        if call == 0:
          jax.block_until_ready(metrics)
          first_call_end, first_call_steps = time.perf_counter(), count
        progress.update(count)
        stop = stop_requested(call)
        is_monitored = monitor and done % monitor_every == 0
        is_saved = done % config.checkpoint_every_steps == 0 or done == total_steps or stop
        if is_monitored or is_saved:  # the host waits for this call anyway
          finish(*pending)  # never checkpoint a broken state
          pending = None
        if is_monitored:
          host_state = dp.get_state(state)
          knn = monitor.accuracies(train_step_lib.eval_variables(host_state),
                                   host_state.probe and host_state.probe["params"])
          writer.write(done, {"epoch": done / steps_per_epoch, **knn})
          progress.set_postfix(loss=f"{log['loss']:.4f}", knn=f"{knn['knn_monitor']:.4f}")
        if is_saved:
          save(done)
        if stop:
          raise Preempted(stop, done)
        step, call = done, call + 1
      if pending:
        finish(*pending)
      jax.block_until_ready(state)
      loop_end = time.perf_counter()
  finally:
    training.close()
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    writer.close()

  # The training record, then the evaluation.
  host_state = dp.get_state(state)
  steady_steps = total_steps - start_step - first_call_steps
  steady_seconds = loop_end - first_call_end
  results = {
      "final_loss": log["loss"],
      "steps": total_steps,
      "schedule_steps": schedule_steps,
      "epochs": total_steps / steps_per_epoch,
      "train_seconds": (trained_seconds or 0.0) + loop_end - train_start,  # every segment
      # False where an earlier segment's checkpoint predates the record of its time.
      "train_seconds_complete": trained_seconds is not None,
      "first_call_seconds": first_call_end - train_start,  # this segment's; compilation included
      "steps_per_call": training.steps_per_call,
      "data_placement": placement,
      # This segment's steady state; None when its first call was all of it.
      "images_per_second": (steady_steps * config.batch_size / steady_seconds
                            if steady_steps > 0 else None),
      "num_devices": len(devices),
      "parallel": config.parallel,
      "resumed_from_step": start_step,
      "params_sha256": params_sha256(host_state.params),
  }
  if is_main:
    evaluator.write_json(os.path.join(workdir, "results.json"), results)
  if config.evaluate_at_end:  # every process: the restore is a collective
    results = evaluator.evaluate_run(config, workdir, progress=config.progress_bar)
  return results
