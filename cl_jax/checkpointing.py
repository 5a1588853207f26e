"""Orbax checkpoints of everything needed to resume a run exactly."""

import json
import logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from cl_jax import multihost


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), "checkpoints")


PROBE_KEY = "online_probe"


def state_to_tree(state, rng, schedule_steps, train_seconds=0.0):
  """The host pytree that is checkpointed: step, params, optimizer state, base key, the
  length of the learning-rate (and momentum) schedule, the seconds trained up to this
  step (over every resumed segment), BatchNorm's running averages where the model has
  BN, the method's own state (its keys at the top level, as written before methods
  had a state of their own, so older checkpoints keep restoring) and the online probe's."""
  tree = {"step": np.asarray(state.step), "params": state.params,
          "opt_state": state.opt_state, "rng": np.asarray(jax.random.key_data(rng)),
          "schedule_steps": np.asarray(schedule_steps, np.int64),
          "train_seconds": np.asarray(train_seconds, np.float64)}
  if state.batch_stats is not None:
    tree["batch_stats"] = state.batch_stats
  for key, value in (state.method_state or {}).items():
    if key in tree:
      raise ValueError(f"method state key {key!r} collides with a checkpoint key")
    tree[key] = value
  if state.probe is not None:
    tree[PROBE_KEY] = state.probe
  return tree


def tree_to_state(tree, state_template):
  """Inverse of `state_to_tree`: returns (state, base key, schedule steps or None).

  Checkpoints written before the schedule's length was saved give None; those written
  before the online probe existed leave the template's fresh probe.
  """
  state = state_template.replace(step=tree["step"], params=tree["params"],
                                 opt_state=tree["opt_state"])
  if state_template.batch_stats is not None:
    state = state.replace(batch_stats=tree["batch_stats"])
  if state_template.method_state is not None:
    state = state.replace(method_state={k: tree[k] for k in state_template.method_state})
  if state_template.probe is not None and PROBE_KEY in tree:
    state = state.replace(probe=tree[PROBE_KEY])
  schedule_steps = int(tree["schedule_steps"]) if "schedule_steps" in tree else None
  return state, jax.random.wrap_key_data(tree["rng"]), schedule_steps


def saved_train_seconds(tree):
  """The seconds trained up to a restored checkpoint; None where it predates the field."""
  return float(tree["train_seconds"]) if "train_seconds" in tree else None


# Keys a checkpoint may lack (written by an earlier version); restored only where present.
_OPTIONAL_KEYS = ("schedule_steps", "train_seconds", PROBE_KEY)


# Config fields a resumed run may change: they do not alter the training math.
# (`max_steps` only says where to stop; the schedule's length comes from
# `num_epochs` and is saved with the checkpoint.)
RESUMABLE_CHANGES = frozenset({
    "max_steps", "num_devices", "parallel", "progress_bar", "log_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "resume", "data_dir", "data_download",
    "knn_k", "weighted_knn_k", "weighted_knn_temperature", "eval_every_epochs", "monitor_bank_size", "monitor_query_size",
    "evaluate_at_end", "eval_train_examples", "eval_batch_size", "tsne_points", "cache_dir",
    "compilation_cache", "data_placement", "stream_read_threads", "stream_prefetch_steps",
    # What the monitor and the evaluation hold out; label-reading methods train without it,
    # which trainer.check_resumable checks for them.
    "validation_examples",
    # How the same math is computed (a checkpoint moves between backends): rounding only.
    "steps_per_call", "model.kernels", "matmul_precision"})


class CheckpointError(RuntimeError):
  """No checkpoint can be used (all unreadable, or the workdir belongs to another config)."""


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def flat_config(config_json, defaults=None):
  """A config's JSON as {"field.subfield": value}; with `defaults` (a config), each field it
  lacks (added to the code since it was saved) as its value in `defaults`."""
  flat = _flatten(json.loads(config_json))
  if defaults is None:
    return flat
  return {**{k: v for k, v in _flatten(json.loads(defaults.to_json())).items() if k not in flat},
          **flat}


def config_differences(saved_config_json, config, defaults=None):
  """Fields (other than RESUMABLE_CHANGES) whose values differ: {field: (saved, now)}.

  A field the saved config lacks (added to the code since) counts as its value in
  `defaults` (a config; each new field's default is what runs did before it existed).
  """
  saved = flat_config(saved_config_json, defaults)
  now = flat_config(config.to_json())
  return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
          if k not in RESUMABLE_CHANGES and k.split(".")[0] not in RESUMABLE_CHANGES
          and saved.get(k) != now.get(k)}


# TensorStore status codes that mean the stored bytes are missing or damaged (a torn write),
# as opposed to the storage being unreachable (UNAVAILABLE, DEADLINE_EXCEEDED,
# PERMISSION_DENIED, UNKNOWN, ...), which a later run can still read.
_CORRUPTION_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "FAILED_PRECONDITION")


# The folder of the one item (Orbax's default) inside a step folder.
_ITEM = "default"


def is_corruption(error):
  """Whether a restore error proves the checkpoint's data incomplete or damaged."""
  if isinstance(error, (FileNotFoundError, json.JSONDecodeError)):
    return True  # a missing item folder or file, or torn metadata
  return isinstance(error, ValueError) and str(error).startswith(_CORRUPTION_CODES)


def _is_structure_mismatch(error):
  return isinstance(error, ValueError) and "tree structures do not match" in str(error)


def _check_shapes(saved, target):
  """Raises a structure mismatch where an array's saved shape differs from the target's
  (Orbax would read it into the target's shape regardless)."""
  shapes = {jax.tree_util.keystr(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]
            if hasattr(leaf, "shape")}
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    name = jax.tree_util.keystr(path)
    if name in shapes and shapes[name] != np.shape(leaf):
      raise ValueError(f"tree structures do not match: {name} has shape {shapes[name]} in the "
                       f"checkpoint, {np.shape(leaf)} here")


class Checkpointer:
  """Saves and restores host pytrees under WORKDIR/checkpoints with a CheckpointManager."""

  def __init__(self, workdir, max_to_keep=3):
    self.directory = checkpoint_dir(workdir)
    self.max_to_keep = max_to_keep
    self.manager = self._open()

  def _open(self):
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True))

  def restore_latest(self, target, attempts=3, retry_seconds=1.0):
    """Restores the newest usable checkpoint into `target`'s structure.

    Each checkpoint is read up to `attempts` times (a flaky network file system
    or bucket mount often recovers). What a read that keeps failing means:
    - the data are provably incomplete or unreadable (a missing item folder,
      a truncated or missing data file, a corrupt stream: TensorStore's
      DATA_LOSS, OUT_OF_RANGE, NOT_FOUND, FAILED_PRECONDITION): the step is
      moved aside to `corrupt-<step>` with a warning and the previous one tried;
    - another tree structure (a different method or model under resume=force):
      CheckpointError at once, the checkpoint left in place;
    - anything else (I/O errors, permissions, time-outs): CheckpointError, the
      checkpoint left in place: re-run once the storage is back.
    With several processes each one reads on its own (no Orbax barrier), then
    they decide together: any error stops all of them; else a step that any
    process found corrupt is set aside by all of them.

    Returns (step, tree), or (None, None) when there are no checkpoints.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    try:
      multihost.assert_same(steps, "every process must see the same checkpoint steps")
    except AssertionError as e:
      raise CheckpointError(str(e)) from e
    corrupt = []
    for step in steps:
      verdict, tree, detail = self._try_restore(step, target, attempts, retry_seconds)
      verdict = multihost.worst_verdict(verdict)
      if verdict == multihost.ERROR:
        raise CheckpointError(
            f"could not read the checkpoint at step {step} in {self.directory} "
            f"({detail or 'failed on another process'}); it was left in place")
      if verdict == multihost.CORRUPT:
        logging.warning("checkpoint at step %d is unreadable, skipping it: %s", step,
                        detail or "found corrupt by another process")
        corrupt.append(step)
        continue
      if corrupt:
        self._set_aside(corrupt)
        logging.warning("resumed from step %d; unreadable checkpoints moved aside: %s",
                        step, ", ".join(f"corrupt-{s}" for s in corrupt))
      return step, tree
    if steps:
      raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps "
                            f"{', '.join(map(str, steps))}); move the directory away to "
                            "start afresh")
    return None, None

  def _try_restore(self, step, target, attempts, retry_seconds):
    """Returns (verdict, tree or None, first line of the error or "")."""
    error = None
    for attempt in range(max(attempts, 1)):
      try:
        return multihost.OK, self._restore_present(step, target), ""
      except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
        error = e
      if is_corruption(error) or _is_structure_mismatch(error):
        break  # reading again cannot help
      if attempt + 1 < attempts:
        time.sleep(retry_seconds * 2**attempt)
    detail = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
    return (multihost.CORRUPT if is_corruption(error) else multihost.ERROR), None, detail

  def _restore_present(self, step, target):
    """Reads step `step` on this process alone (no barrier: a process whose read fails must
    not leave the others waiting inside Orbax), leaving out optional keys it lacks."""
    index = jax.process_index()
    reader = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=index, active_processes={index}))
    try:
      path = os.path.join(self.directory, str(step), _ITEM)
      saved = reader.metadata(path).item_metadata
      if saved is None:  # Orbax read no metadata: missing or torn (raises), or unreadable
        with open(os.path.join(path, "_METADATA"), encoding="utf-8") as f:
          json.load(f)
        raise OSError(f"Orbax could not read the metadata in {path}")
      saved_keys = set(saved.keys())
      missing = set(target) - saved_keys - set(_OPTIONAL_KEYS)
      if missing:  # another method's state (resume=force): say so without retrying
        raise ValueError(f"tree structures do not match: the checkpoint has no "
                         f"{', '.join(sorted(missing))}")
      extra = saved_keys - set(target)
      if extra:  # another method's state, or an online probe this config has none of
        raise ValueError(f"tree structures do not match: the checkpoint has "
                         f"{', '.join(sorted(extra))}, which this config has none of")
      target = {k: v for k, v in target.items() if k not in _OPTIONAL_KEYS or k in saved_keys}
      _check_shapes(saved, target)
      return reader.restore(path, target)
    finally:
      reader.close()

  def _set_aside(self, steps):
    """Renames unreadable step folders so that Orbax saves newer steps again (all processes
    call it: closing and reopening the manager are collectives)."""
    self.manager.close()
    if multihost.is_main_process():
      for step in steps:
        aside = os.path.join(self.directory, f"corrupt-{step}")
        suffix = 1
        while os.path.exists(aside):  # set aside once before: keep both
          aside = os.path.join(self.directory, f"corrupt-{step}-{suffix}")
          suffix += 1
        os.replace(os.path.join(self.directory, str(step)), aside)
    multihost.barrier("corrupt_checkpoints_set_aside")
    self.manager = self._open()

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, tree):
    """Starts an asynchronous save of `tree` at `step` (no-op if it exists)."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(tree))

  def restore(self, step, target):
    """Restores the checkpoint at `step` into the structure of host pytree `target`."""
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_tree(self, step):
    """The checkpoint at `step` as saved, without knowing its structure beforehand."""
    return self.manager.restore(step, args=ocp.args.StandardRestore())

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
