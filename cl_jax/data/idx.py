"""Reading and validating the canonical IDX files (MNIST and datasets in its layout)."""

import gzip
import os

import numpy as np

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# File names of the canonical distribution, by split.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class IdxFormatError(ValueError):
  """An IDX file that is not what it claims to be; the message names the file."""


def _read_bytes(path):
  opener = gzip.open if str(path).endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      return f.read()
  except (OSError, EOFError) as e:  # gzip raises these for truncated/corrupt streams.
    raise IdxFormatError(f"{path}: cannot be read ({e})") from e


def _header(path, data, magic, num_dims):
  header_bytes = 4 * (1 + num_dims)
  if len(data) < header_bytes:
    raise IdxFormatError(
        f"{path}: only {len(data)} bytes, shorter than the {header_bytes}-byte header")
  fields = np.frombuffer(data[:header_bytes], dtype=">i4")
  if fields[0] != magic:
    raise IdxFormatError(f"{path}: magic number {fields[0]}, expected {magic}")
  return [int(x) for x in fields[1:]], header_bytes


def read_idx_images(path):
  """Returns uint8 images [N, rows, cols, 1] from an IDX3 file (gzipped or not)."""
  data = _read_bytes(path)
  (count, rows, cols), offset = _header(path, data, IMAGES_MAGIC, 3)
  expected = count * rows * cols
  if len(data) - offset != expected:
    raise IdxFormatError(
        f"{path}: header says {count} images of {rows}x{cols} ({expected} bytes), "
        f"file holds {len(data) - offset} bytes of pixels")
  pixels = np.frombuffer(data, dtype=np.uint8, offset=offset)
  return pixels.reshape(count, rows, cols, 1)


def read_idx_labels(path):
  """Returns uint8 labels [N] from an IDX1 file (gzipped or not)."""
  data = _read_bytes(path)
  (count,), offset = _header(path, data, LABELS_MAGIC, 1)
  if len(data) - offset != count:
    raise IdxFormatError(
        f"{path}: header says {count} labels, file holds {len(data) - offset}")
  return np.frombuffer(data, dtype=np.uint8, offset=offset)


def read_idx_split(src_dir, split, num_classes=10):
  """Reads one split from `src_dir`; checks that images and labels agree."""
  image_name, label_name = IDX_FILES[split]
  image_path = os.path.join(src_dir, image_name)
  label_path = os.path.join(src_dir, label_name)
  for path in (image_path, label_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: missing (expected the canonical IDX files in {src_dir})")
  images = read_idx_images(image_path)
  labels = read_idx_labels(label_path)
  if len(images) != len(labels):
    raise IdxFormatError(
        f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
  if labels.size and labels.max() >= num_classes:
    raise IdxFormatError(f"{label_path}: label {labels.max()} outside 0..{num_classes - 1}")
  return images, labels
