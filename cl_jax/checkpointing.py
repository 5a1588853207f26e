"""Orbax checkpoints of everything needed to resume a run exactly."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def state_to_tree(state, rng):
  """The host pytree that is checkpointed: step, params, optimizer state, base key."""
  return {"step": np.asarray(state.step), "params": state.params,
          "opt_state": state.opt_state, "rng": np.asarray(jax.random.key_data(rng))}


def tree_to_state(tree, state_template):
  """Inverse of `state_to_tree`: returns (state, base key)."""
  state = state_template.replace(step=tree["step"], params=tree["params"],
                                 opt_state=tree["opt_state"])
  return state, jax.random.wrap_key_data(tree["rng"])


class Checkpointer:
  """Saves and restores host pytrees under WORKDIR/checkpoints with a CheckpointManager."""

  def __init__(self, workdir, max_to_keep=3):
    self.manager = ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

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
