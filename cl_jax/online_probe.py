"""The online linear probe (solo-learn's): a linear classifier on the encoder's features,
trained beside pre-training on the same views, through a stop-gradient, so that it never
changes the encoder. It says during training what the features are worth to a classifier.

The labels it reads are those of the pre-training batch; images without one (label -1: the
validation split's, whose labels the pre-training split hides, and an unlabelled split's)
take no part in its loss.
"""

import jax
import jax.numpy as jnp
import optax


def optimizer(learning_rate):
  """Adam: the features' scale changes as the encoder trains, and Adam's steps do not
  follow it (solo-learn's SGD at 0.1 assumes features of a ResNet's scale)."""
  return optax.adam(learning_rate)


def init(feature_width, num_classes, learning_rate):
  """The probe's state: {"params": {"kernel" [width, classes], "bias" [classes]} at zero,
  "opt_state": its optimizer's, "start_step": the step it started training at (0; later
  for a run resumed from a checkpoint written before the probe existed)}."""
  params = {"kernel": jnp.zeros((feature_width, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  return {"params": params, "opt_state": optimizer(learning_rate).init(params),
          "start_step": jnp.zeros((), jnp.int32)}


def logits(params, features):
  return jnp.matmul(features.astype(jnp.float32), params["kernel"],
                    precision=jax.lax.Precision.HIGHEST) + params["bias"]


def loss_and_grads(params, features, labels, axis_name=None):
  """The mean cross-entropy over the labelled rows (label >= 0) of the global batch (every
  device of `axis_name`), whatever their share per device, its gradient and the accuracy on
  those rows: (loss, grads, accuracy), identical on every device. `features` [n, width] are
  constants here."""
  features = jax.lax.stop_gradient(features)
  labelled = labels >= 0
  total = lambda x: jax.lax.psum(x, axis_name) if axis_name is not None else x
  count = jnp.maximum(total(labelled.sum()), 1)

  def loss_fn(params):
    out = logits(params, features)
    per_row = optax.losses.softmax_cross_entropy_with_integer_labels(
        out, jnp.maximum(labels, 0))
    return jnp.where(labelled, per_row, 0.0).sum() / count, out

  (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  correct = jnp.where(labelled, jnp.argmax(out, axis=1) == labels, False).sum()
  loss, grads, correct = total((loss, grads, correct))
  return loss, grads, correct / count


def update(probe, features, labels, learning_rate, axis_name=None):
  """One optimizer step of the probe on this device's `features` and `labels` (-1: none;
  `loss_and_grads`). Returns (probe, {"probe_loss", "probe_accuracy"})."""
  loss, grads, accuracy = loss_and_grads(probe["params"], features, labels, axis_name)
  updates, opt_state = optimizer(learning_rate).update(grads, probe["opt_state"],
                                                        probe["params"])
  params = optax.apply_updates(probe["params"], updates)
  return ({**probe, "params": params, "opt_state": opt_state},
          {"probe_loss": loss, "probe_accuracy": accuracy})


def accuracy(params, features, labels):
  """Host accuracy of the probe with `params` on NumPy or jax `features` and `labels`."""
  predictions = jnp.argmax(logits(params, jnp.asarray(features)), axis=1)
  return float(jnp.mean(predictions == jnp.asarray(labels)))
