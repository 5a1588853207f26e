"""DINO (Caron et al. 2021): a student network and a momentum (EMA) teacher, both ending in
prototype scores; the student's softmax of each view regresses the teacher's centred,
sharpened softmax of the other view (cross-entropy); no negatives, no predictor. Follows the
paper's Algorithm 1 and solo-learn's implementation: the teacher's temperature warms up
linearly, the centre is an EMA of the teacher's mean scores over the global batch, and the
teacher's EMA rate rises from `config.momentum` to 1 along a cosine; the student's prototypes
can be frozen for the first epochs (`dino_freeze_prototypes_epochs`). With multi-crop
(`augment.local_crops`) the student also scores the local views, each against both global
views' teacher targets; the teacher sees only the global views."""

import jax.numpy as jnp

from cl_jax import losses
from cl_jax.methods import base


def teacher_temperature(config, step, schedule_steps):
  """The teacher's temperature at (0-based) `step`: linear from the first value of
  `config.dino_teacher_temperature` to the second over `dino_teacher_warmup_epochs`, then
  the second."""
  start, final = config.dino_teacher_temperature
  warmup_steps = config.dino_teacher_warmup_epochs * schedule_steps / config.num_epochs
  if warmup_steps <= 0:
    return final
  return start + (final - start) * jnp.minimum(step / warmup_steps, 1.0)


@base.register("dino")
class DINO(base.CosineMomentumMethod):
  uses_prototypes = True
  uses_local_views = True

  def check_config(self, config, fail):
    super().check_config(config, fail)
    if config.dino_student_temperature <= 0:
      fail("dino_student_temperature", config.dino_student_temperature, "must be positive")
    temperatures = tuple(config.dino_teacher_temperature)
    if len(temperatures) != 2 or min(temperatures) <= 0:
      fail("dino_teacher_temperature", temperatures, "must be two positive temperatures")
    if config.dino_teacher_warmup_epochs < 0:
      fail("dino_teacher_warmup_epochs", config.dino_teacher_warmup_epochs, "must be >= 0")
    if not 0 <= config.dino_centre_momentum < 1:
      fail("dino_centre_momentum", config.dino_centre_momentum, "must be in [0, 1)")
    if config.dino_freeze_prototypes_epochs < 0:
      fail("dino_freeze_prototypes_epochs", config.dino_freeze_prototypes_epochs, "must be >= 0")

  def frozen_parameters(self, config, schedule_steps):
    """The student's prototypes for the first dino_freeze_prototypes_epochs (the paper's
    `cancel_gradients_last_layer`)."""
    return base.frozen_prototypes(config.dino_freeze_prototypes_epochs, config, schedule_steps)

  def initial_state(self, config, params, batch_stats, key, embedding_width):
    state = super().initial_state(config, params, batch_stats, key, embedding_width)
    state["centre"] = jnp.zeros((embedding_width,), jnp.float32)  # the paper's C = 0
    return state

  def loss(self, params, state, view1, view2, batch, config, axis_name,
           schedule_steps, local_views):
    del batch
    s1, s2, batch_stats, features = base.forward_views(state, params, state.batch_stats, view1,
                                                       view2, axis_name, predict=True)
    student = jnp.stack([s1, s2])
    if local_views is not None:  # the student alone sees them
      student = jnp.concatenate([student, base.forward_local_views(
          state, params, state.batch_stats, local_views, axis_name, predict=True)])
    t1, t2, momentum_stats = self.momentum_outputs(state, view1, view2, axis_name, predict=True)
    teacher = jnp.stack([t1, t2])
    value = losses.dino_cross_entropy(
        student, teacher, state.method_state["centre"],
        config.dino_student_temperature, teacher_temperature(config, state.step, schedule_steps))
    return value, {"batch_stats": batch_stats, "momentum_batch_stats": momentum_stats,
                   "features": features, "teacher_scores": teacher}

  def after_step(self, state, step, aux, config, schedule_steps, axis_name):
    """The teacher's EMA, then the centre's: C <- m C + (1 - m) the mean of the teacher's
    scores of both views over the global batch (the paper's update_center)."""
    state = super().after_step(state, step, aux, config, schedule_steps, axis_name)
    scores = aux["teacher_scores"]
    batch_centre = losses.global_mean(scores.reshape(-1, scores.shape[-1]), axis_name)
    m = dict(state.method_state)
    rate = config.dino_centre_momentum
    m["centre"] = rate * m["centre"] + (1.0 - rate) * batch_centre
    return state.replace(method_state=m)
