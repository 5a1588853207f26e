"""cl_jax.data: offline IDX import -> TFDS -> in-memory split, on small synthetic files."""

import numpy as np
import pytest

from cl_jax import data
from cl_jax.data import import_idx
from tests.test_idx import write_split


def test_import_then_tfds_load_returns_the_same_arrays_in_order(tmp_path):
  rng = np.random.default_rng(1)
  src = tmp_path / "idx"
  src.mkdir()
  expected = {}
  for split, n in (("train", 12), ("test", 7)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    write_split(src, split, images, labels)
    expected[split] = (images, labels)
  data_dir = str(tmp_path / "tfds")
  import_idx.import_idx(str(src), "mnist", data_dir)

  for split, (images, labels) in expected.items():
    loaded = data.load_split("mnist", split, data_dir)
    np.testing.assert_array_equal(loaded.images[..., 0], images)  # exact, same order
    np.testing.assert_array_equal(loaded.labels, labels)
  first = data.load_split("mnist", "train", data_dir, max_examples=5)
  np.testing.assert_array_equal(first.labels, expected["train"][1][:5])


def test_missing_dataset_error_names_the_fix(tmp_path):
  with pytest.raises(data.DatasetNotPreparedError,
                     match=r"python -m cl_jax.data.import_idx --src .* --dataset mnist"):
    data.load_split("mnist", "train", str(tmp_path))


def test_real_mnist_statistics(mnist_data_dir):
  """Counts and mean from the dataset's README (published values)."""
  train = data.load_split("mnist", "train", mnist_data_dir)
  test = data.load_split("mnist", "test", mnist_data_dir)
  assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(
      np.bincount(train.labels), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
  np.testing.assert_array_equal(
      np.bincount(test.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  assert abs(train.images.mean() / 255 - 0.1307) < 5e-5  # README gives 4 decimals
  assert list(train.labels[:5]) == [5, 0, 4, 1, 9]  # canonical order kept
