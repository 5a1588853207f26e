"""The methods behind `config.method`, one module each, found by name.

Every method shares the data, the two-view augmentation, the data-parallel
step (`train_step.train_step`), checkpoints and evaluation. Its module defines
a `base.Method` subclass registered with `@base.register(name)`: its loss,
its own state and how it starts, its update after each step, its config checks
and the model parts it adds. A new method is one module here (imported below)
plus its config in configs/.
"""

from cl_jax.methods import base
# Imported for their registration; the order is the order of METHODS.
from cl_jax.methods import simclr  # pylint: disable=unused-import
from cl_jax.methods import moco  # pylint: disable=unused-import
from cl_jax.methods import byol  # pylint: disable=unused-import
from cl_jax.methods import supcon  # pylint: disable=unused-import
from cl_jax.methods import triplet  # pylint: disable=unused-import
from cl_jax.methods import margin  # pylint: disable=unused-import
from cl_jax.methods import barlow_twins  # pylint: disable=unused-import
from cl_jax.methods import vicreg  # pylint: disable=unused-import
from cl_jax.methods import simsiam  # pylint: disable=unused-import
from cl_jax.methods import mocov3  # pylint: disable=unused-import
from cl_jax.methods import nnclr  # pylint: disable=unused-import
from cl_jax.methods import dino  # pylint: disable=unused-import
from cl_jax.methods import swav  # pylint: disable=unused-import

METHODS = tuple(base.REGISTRY)


def get(name):
  """The registered method `name`; ValueError naming the allowed ones otherwise."""
  if name not in base.REGISTRY:
    raise ValueError(f"config.method={name!r}; allowed: {', '.join(METHODS)}")
  return base.REGISTRY[name]
