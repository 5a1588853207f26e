"""What the entry points print: the libraries quiet by default, cl_jax's own messages."""

import logging
import os

from absl import flags
from absl import logging as absl_logging


def define_flags():
  """--verbose, shared by cl_jax.train and cl_jax.evaluate."""
  flags.DEFINE_bool(
      "verbose", False, "Show the INFO logs of JAX, Orbax, TFDS and absl too (by default only "
      "their warnings, cl_jax's own messages and the progress bar).")


def quiet_libraries(verbose=False):
  """The libraries' loggers at WARNING (INFO with `verbose`), cl_jax's own at INFO; and,
  unless `verbose`, TensorFlow's C++ INFO lines off (set before TensorFlow loads, which
  the entry points do only later, through TFDS; a value already set is kept). TensorFlow
  only reads the data here, so its oneDNN notice (and numerics) do not matter."""
  if not verbose:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
  logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
  logging.getLogger("cl_jax").setLevel(logging.INFO)
