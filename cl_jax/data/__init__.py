"""Whole-split in-memory loading of TFDS image-classification datasets, in one defined order.

TFDS's own download of a dataset shuffles the examples when it prepares them,
while the offline import (`import_idx`) keeps the IDX files' order; so "the
first N images" would name different images depending on where the data came
from. `load_split` therefore puts every split in its canonical order, sorted by
each example's content digest (SHA-256 of the image bytes and the label): the
same order however the data were prepared, and a fixed pseudo-random order
that is not grouped by class or writer. Every protocol that takes "the first N"
(`validation_examples`, `max_train_examples`, the monitor's bank and queries, the
seed protocol's 8,000 / 2,000 split, `eval_train_examples`) reads that order.
"""

import dataclasses
import hashlib
import os
import socket
import threading

import numpy as np

# The environment variable TFDS itself reads for its data dir.
TFDS_DATA_DIR_ENV = "TFDS_DATA_DIR"
# Where TFDS fetches MNIST and its GCS mirror of prepared datasets: probed before a download,
# so that an offline machine fails in seconds instead of retrying for minutes.
# $CL_JAX_DOWNLOAD_PROBE=host:port probes another address (the tests use a closed local port).
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
DOWNLOAD_PROBE_ENV = "CL_JAX_DOWNLOAD_PROBE"
PROBE_SECONDS = 5.0


def download_host():
  override = os.environ.get(DOWNLOAD_PROBE_ENV)
  if override:
    host, port = override.rsplit(":", 1)
    return host, int(port)
  return DOWNLOAD_HOST


def host_reachable(address, timeout=PROBE_SECONDS):
  """Whether a TCP connection to `address` opens within `timeout` (name lookup included)."""
  opened = []

  def probe():
    try:
      socket.create_connection(address, timeout=timeout).close()
      opened.append(True)
    except OSError:
      pass
  thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no time-out
  thread.start()
  thread.join(2 * timeout)
  return bool(opened)


class DatasetNotPreparedError(RuntimeError):
  """TFDS has no prepared copy of the dataset and this machine cannot download it."""


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    """The examples at `index` (a slice or an index array), as a Split."""
    return Split(images=self.images[index], labels=self.labels[index])

  def fingerprint(self):
    """SHA-256 (hex) of the images and labels in order: names exactly this data."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(self.images).tobytes())
    digest.update(np.ascontiguousarray(self.labels, np.int32).tobytes())
    return digest.hexdigest()


def to_float(images):
  """uint8 pixels as float32 in [0, 1]; NumPy and jax arrays alike."""
  return images.astype("float32") / 255.0


def canonical_order(images, labels):
  """Indices sorting examples by SHA-256 of (image bytes, int32 label); stable for equal ones."""
  digests = [hashlib.sha256(image.tobytes() + np.int32(label).tobytes()).digest()
             for image, label in zip(images, labels)]
  return np.array(sorted(range(len(digests)), key=digests.__getitem__), np.int64)


def _hide_gpus_from_tensorflow():
  # TF is only a reader here; without this it would grab accelerator memory.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


def load_split(dataset, split, data_dir=None, max_examples=-1, download=False):
  """Loads a whole TFDS split into host memory as uint8 images and int32 labels.

  Args:
    dataset: registered TFDS name, e.g. "mnist" or "fashion_mnist".
    split: TFDS split name ("train", "test").
    data_dir: TFDS data dir; None or "" means TFDS's default ($TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    max_examples: keep only the first this many examples (in the canonical
      order, see the module docstring); -1 keeps all.
    download: let TFDS download and prepare the dataset when it is missing and
      its download host answers (without internet TFDS would retry for minutes;
      the probe fails within about 10 s).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _hide_gpus_from_tensorflow()
  data_dir = data_dir or None
  builder = tfds.builder(dataset, data_dir=data_dir)
  if not builder.is_prepared():
    fix = (f"Import it from the canonical IDX files with:\n"
           f"  python -m cl_jax.data.import_idx --src DIR_WITH_IDX_FILES --dataset {dataset}"
           + (f" --data_dir {data_dir}" if data_dir else ""))
    if not download:
      raise DatasetNotPreparedError(
          f"TFDS dataset '{dataset}' is not prepared in {builder.data_dir} and "
          f"--config.data_download=False. {fix}")
    host = download_host()
    behind_proxy = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy"))
    probe = not behind_proxy or DOWNLOAD_PROBE_ENV in os.environ  # a proxy may reach it
    if probe and not host_reachable(host):
      raise DatasetNotPreparedError(
          f"TFDS dataset '{dataset}' is not prepared in {builder.data_dir} and cannot be "
          f"downloaded: {host[0]}:{host[1]} does not answer (offline?). {fix}")
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetNotPreparedError(
          f"TFDS dataset '{dataset}' is not prepared in {builder.data_dir} and could not be "
          f"downloaded ({type(e).__name__}). {fix}") from e
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
  images = np.asarray(data["image"], np.uint8)
  labels = np.asarray(data["label"], np.int32)
  order = canonical_order(images, labels)
  if max_examples >= 0:
    order = order[:max_examples]
  return Split(images=images[order], labels=labels[order])


def split_validation(train, validation_examples):
  """(validation, rest) of a training split in its canonical order: the first
  `validation_examples` examples hold out the labels every selection reads (the online
  monitor's queries, the validation metrics), the rest are the k-NN bank and the probe's
  fit set for them. The test split is never part of either."""
  if not 0 <= validation_examples < len(train):
    raise ValueError(f"validation_examples={validation_examples}: must be in [0, "
                     f"{len(train)}) for a training split of {len(train)} examples")
  return train[:validation_examples], train[validation_examples:]


def class_names(dataset, data_dir=None):
  """The names of the labels 0, 1, ... from the dataset's TFDS features ("0".."9" for MNIST),
  or None when its `label` feature names none (not a ClassLabel)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  label = tfds.builder(dataset, data_dir=data_dir or None).info.features["label"]
  return list(label.names) if isinstance(label, tfds.features.ClassLabel) else None


def default_data_dir():
  """TFDS data dir from the environment, or None for TFDS's own default."""
  return os.environ.get(TFDS_DATA_DIR_ENV) or None
