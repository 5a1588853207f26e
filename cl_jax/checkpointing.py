"""Orbax checkpoints of everything needed to resume a run exactly."""

import json
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from cl_jax import multihost


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), "checkpoints")


# ContrastiveState fields that only some methods use (None otherwise: not saved).
_METHOD_FIELDS = ("momentum_params", "queue", "queue_next")


def state_to_tree(state, rng):
  """The host pytree that is checkpointed: step, params, optimizer state, base key, and
  the method's momentum network and queue where it has them."""
  tree = {"step": np.asarray(state.step), "params": state.params,
          "opt_state": state.opt_state, "rng": np.asarray(jax.random.key_data(rng))}
  for field in _METHOD_FIELDS:
    if getattr(state, field, None) is not None:
      tree[field] = getattr(state, field)
  return tree


def tree_to_state(tree, state_template):
  """Inverse of `state_to_tree`: returns (state, base key)."""
  state = state_template.replace(step=tree["step"], params=tree["params"],
                                 opt_state=tree["opt_state"],
                                 **{f: tree[f] for f in _METHOD_FIELDS if f in tree})
  return state, jax.random.wrap_key_data(tree["rng"])


# Config fields a resumed run may change: they do not alter the training math.
RESUMABLE_CHANGES = frozenset({
    "max_steps", "num_devices", "parallel", "progress_bar", "log_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "resume", "data_dir", "data_download",
    "knn_k", "eval_every_epochs", "monitor_bank_size", "monitor_query_size",
    "evaluate_at_end", "eval_train_examples", "eval_batch_size", "tsne_points", "cache_dir"})


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


def config_differences(saved_config_json, config):
  """Fields (other than RESUMABLE_CHANGES) whose values differ: {field: (saved, now)}."""
  saved = _flatten(json.loads(saved_config_json))
  now = _flatten(json.loads(config.to_json()))
  return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
          if k.split(".")[0] not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)}


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

  def restore_latest(self, target):
    """Restores the newest checkpoint that reads back into `target`'s structure.

    An unreadable checkpoint (truncated or missing files) is moved aside to
    `corrupt-<step>` with a warning, and the previous one is tried. Returns
    (step, tree), or (None, None) when there are no checkpoints; raises
    CheckpointError when there are some but none is readable.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    skipped = []
    for step in steps:
      try:
        tree = self.restore(step, target)
      except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
        logging.warning("checkpoint at step %d is unreadable, skipping it: %s",
                        step, str(e).splitlines()[0][:300])
        skipped.append(step)
        continue
      if skipped:
        self._set_aside(skipped)
        logging.warning("resumed from step %d; unreadable checkpoints moved aside: %s",
                        step, ", ".join(f"corrupt-{s}" for s in skipped))
      return step, tree
    if steps:
      raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps "
                            f"{', '.join(map(str, steps))}); move the directory away to "
                            "start afresh")
    return None, None

  def _set_aside(self, steps):
    """Renames unreadable step folders so that Orbax saves newer steps again."""
    self.manager.close()
    if multihost.is_main_process():
      for step in steps:
        os.replace(os.path.join(self.directory, str(step)),
                   os.path.join(self.directory, f"corrupt-{step}"))
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

  def restore_params(self, step):
    """Only the parameters of the checkpoint at `step`, without knowing the rest's structure."""
    return self.manager.restore(step, args=ocp.args.StandardRestore())["params"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
