"""Config files (Python files with `get_config()`) loaded by path, from any working directory.

A config file that builds on another one loads it with `sibling(__file__, NAME)`
rather than `from configs import NAME`, so that `--config /abs/path/configs/mnist.py`
works from any directory (ml_collections loads the file by path, and `configs`
is not an installed package).
"""

import importlib.util
import os


def load(path):
  """The module defined by the Python file at `path`."""
  name = "cl_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(config_file, name):
  """The config file `name`.py in the directory of `config_file` (pass `__file__`)."""
  return load(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))
