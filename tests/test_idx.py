"""cl_jax.data.idx: IDX parsing and validation against hand-written files."""

import gzip
import struct

import numpy as np
import pytest

from cl_jax.data import idx


def write_images(path, images, magic=idx.IMAGES_MAGIC, count=None):
  n, rows, cols = images.shape
  header = struct.pack(">iiii", magic, n if count is None else count, rows, cols)
  with gzip.open(path, "wb") as f:
    f.write(header + images.astype(np.uint8).tobytes())


def write_labels(path, labels, magic=idx.LABELS_MAGIC):
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">ii", magic, len(labels)) + labels.astype(np.uint8).tobytes())


def write_split(folder, split, images, labels):
  image_name, label_name = idx.IDX_FILES[split]
  write_images(folder / image_name, images)
  write_labels(folder / label_name, labels)


def test_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  labels = np.array([3, 1, 4, 1, 5], np.uint8)
  write_split(tmp_path, "train", images, labels)
  got_images, got_labels = idx.read_idx_split(tmp_path, "train")
  np.testing.assert_array_equal(got_images[..., 0], images)  # exact: bytes in, bytes out
  np.testing.assert_array_equal(got_labels, labels)


def test_wrong_magic_names_file(tmp_path):
  write_images(tmp_path / "x.gz", np.zeros((2, 28, 28)), magic=2049)
  with pytest.raises(idx.IdxFormatError, match=r"x\.gz: magic number 2049, expected 2051"):
    idx.read_idx_images(tmp_path / "x.gz")


def test_truncated_pixels(tmp_path):
  write_images(tmp_path / "x.gz", np.zeros((3, 28, 28)), count=4)
  with pytest.raises(idx.IdxFormatError, match="header says 4 images"):
    idx.read_idx_images(tmp_path / "x.gz")


def test_truncated_gzip_stream(tmp_path):
  write_images(tmp_path / "x.gz", np.zeros((3, 28, 28)))
  data = (tmp_path / "x.gz").read_bytes()
  (tmp_path / "x.gz").write_bytes(data[:len(data) // 2])
  with pytest.raises(idx.IdxFormatError, match="cannot be read"):
    idx.read_idx_images(tmp_path / "x.gz")


def test_count_mismatch_between_files(tmp_path):
  image_name, label_name = idx.IDX_FILES["test"]
  write_images(tmp_path / image_name, np.zeros((3, 28, 28)))
  write_labels(tmp_path / label_name, np.zeros(2))
  with pytest.raises(idx.IdxFormatError, match="3 images but .* 2 labels"):
    idx.read_idx_split(tmp_path, "test")


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
    idx.read_idx_split(tmp_path, "train")
