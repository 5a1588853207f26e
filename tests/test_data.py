"""cl_jax.data: offline IDX import -> TFDS -> in-memory split, on small synthetic files."""

import time

import numpy as np
import pytest

from cl_jax import data
from cl_jax.data import import_idx
from tests.test_idx import write_split


def import_examples(root, name, splits):
  src = root / f"{name}_idx"
  src.mkdir()
  for split, (images, labels) in splits.items():
    write_split(src, split, images, labels)
  data_dir = str(root / f"{name}_tfds")
  import_idx.import_idx(str(src), "mnist", data_dir)
  return data_dir


def test_load_split_order_does_not_depend_on_the_source_order(tmp_path):
  """The same examples prepared in two orders (the IDX files' and a shuffled one, as TFDS's
  download makes) load as identical arrays, and "the first N" are the same images."""
  rng = np.random.default_rng(1)
  splits = {split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                    rng.integers(0, 10, n).astype(np.uint8)) for split, n in (("train", 12),
                                                                               ("test", 7))}
  splits["train"][0][3] = splits["train"][0][5]  # a duplicate image with another label
  shuffled = {}
  for split, (images, labels) in splits.items():
    perm = rng.permutation(len(labels))
    shuffled[split] = (images[perm], labels[perm])
  in_order = import_examples(tmp_path, "ordered", splits)
  reordered = import_examples(tmp_path, "shuffled", shuffled)

  for split, (images, labels) in splits.items():
    a = data.load_split("mnist", split, in_order)
    b = data.load_split("mnist", split, reordered)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.fingerprint() == b.fingerprint()
    # Nothing lost or changed: the same multiset of (image, label) as was written.
    written = sorted(im.tobytes() + bytes([lb]) for im, lb in zip(images, labels))
    loaded = sorted(im[..., 0].tobytes() + bytes([lb]) for im, lb in zip(a.images, a.labels))
    assert written == loaded
  first = data.load_split("mnist", "train", in_order, max_examples=5)
  np.testing.assert_array_equal(first.images, data.load_split("mnist", "train", reordered).images[:5])


def test_missing_dataset_error_names_the_fix(tmp_path):
  with pytest.raises(data.DatasetNotPreparedError,
                     match=r"(?s)data_download=False.*python -m cl_jax.data.import_idx --src .* "
                     r"--dataset mnist"):
    data.load_split("mnist", "train", str(tmp_path), download=False)


def test_offline_download_fails_fast_and_names_the_fix(tmp_path, monkeypatch, closed_local_port):
  """Downloading is the default; with the download host unreachable (a closed local port
  stands in for it here) the error comes at once and names the offline import."""
  monkeypatch.setenv(data.DOWNLOAD_PROBE_ENV, f"127.0.0.1:{closed_local_port}")
  import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import  (not timed)
  start = time.monotonic()
  with pytest.raises(data.DatasetNotPreparedError,
                     match=r"(?s)cannot be downloaded: 127.0.0.1:\d+ does not answer .*"
                     r"python -m cl_jax.data.import_idx"):
    data.load_split("mnist", "train", str(tmp_path), download=True)
  assert time.monotonic() - start < 15


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
  # The canonical order is not the IDX files' (which starts 5, 0, 4, 1, 9) and mixes classes.
  assert list(train.labels[:5]) != [5, 0, 4, 1, 9]
  assert len(np.unique(train.labels[:100])) == 10


def test_class_names_of_mnist(mnist_data_dir):
  assert data.class_names("mnist", mnist_data_dir) == [str(digit) for digit in range(10)]


@pytest.mark.parametrize("label_feature, expected", [
    ("ClassLabel", ["cat", "dog", "fish"]),
    ("Tensor", None),  # integer labels without names: the caller shows the integers
])
def test_class_names_from_the_label_feature(tmp_path, label_feature, expected):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  label = (tfds.features.ClassLabel(names=["cat", "dog", "fish"]) if label_feature == "ClassLabel"
           else tfds.features.Tensor(shape=(), dtype=np.int64))
  tfds.dataset_builders.store_as_tfds_dataset(
      name="three_labels", version="1.0.0",
      features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(2, 2, 1)),
                                           "label": label}),
      split_datasets={"test": tf.data.Dataset.from_tensor_slices(
          {"image": np.zeros((3, 2, 2, 1), np.uint8), "label": np.arange(3, dtype=np.int64)})},
      data_dir=str(tmp_path))
  assert data.class_names("three_labels", str(tmp_path)) == expected
