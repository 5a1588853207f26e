"""Shared fixtures. Simulates 8 CPU devices; must run before JAX initialises."""

import atexit
import os
import shutil
import socket
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The baselines' metrics and the compiled programs of the runs the tests start (in this
# process and in the subprocesses, which inherit it) go to a folder of this session's, not
# to the user's ~/.cache/cl_jax: a test that kills a run mid-write leaves no torn entry in a
# cache that outlives the session.
_CACHE = tempfile.mkdtemp(prefix="cl_jax_test_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["CL_JAX_CACHE"] = _CACHE

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# Where .ci/run (or the developer) points at the four canonical MNIST IDX files.
MNIST_IDX_ENV = "MNIST_IDX_DIR"
# Optional, for a developer's loop: a TFDS data dir that keeps the import between sessions.
TEST_DATA_DIR_ENV = "CL_JAX_TEST_DATA_DIR"
# Set by .ci/run: missing real data fails the tests that need it instead of skipping them.
REQUIRE_DATA_ENV = "CL_JAX_REQUIRE_DATA"


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory):
  """A TFDS data dir holding MNIST, imported offline from $MNIST_IDX_DIR once per session."""
  src = os.environ.get(MNIST_IDX_ENV)
  if not src or not os.path.isdir(src):
    message = f"set {MNIST_IDX_ENV} to the folder with the MNIST IDX files"
    if os.environ.get(REQUIRE_DATA_ENV):
      pytest.fail(f"{message} ({REQUIRE_DATA_ENV} is set: real-data tests may not skip)")
    pytest.skip(message)
  from cl_jax.data import import_idx  # pylint: disable=g-import-not-at-top
  data_dir = os.environ.get(TEST_DATA_DIR_ENV) or str(tmp_path_factory.mktemp("tfds"))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not tfds.builder("mnist", data_dir=data_dir).is_prepared():
    import_idx.import_idx(src, "mnist", data_dir)
  return data_dir


@pytest.fixture
def closed_local_port():
  """A local TCP port nothing listens on (connections are refused): stands in for a download
  host that cannot be reached, without sending anything off this machine."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
