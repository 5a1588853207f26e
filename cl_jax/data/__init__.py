"""Whole-split in-memory loading of TFDS image-classification datasets, in one defined order.

TFDS's own download of a dataset shuffles the examples when it prepares them,
while the offline import (`import_idx`) keeps the IDX files' order; so "the
first N images" would name different images depending on where the data came
from. `load_split` therefore puts every split in its canonical order, sorted by
each example's content digest (SHA-256 of the image bytes and the label): the
same order however the data were prepared, and a fixed pseudo-random order
that is not grouped by class or writer. Every protocol that takes "the first N"
(`validation_examples`, `max_train_examples`, the monitor's bank and queries, the
seed protocol's first 80% of the test split (MNIST: 8,000 / 2,000), `eval_train_examples`) reads that order.
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


class MixedSizesError(ValueError):
  """The dataset's images have no one size and no resize was asked for."""


# Datasets whose canonical files are in MNIST's IDX layout (cl_jax.data.import_idx).
IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the code needs to know of a dataset, from its TFDS metadata."""
  name: str
  image_shape: tuple  # (H, W, C) of the images as loaded (after any resize)
  num_classes: int | None  # None: the labels are not a ClassLabel
  class_names: list | None  # the names of labels 0, 1, ...; None: integer labels only
  # The split reported once: "test", or "validation" where there is no test split; None
  # where the prepared dataset has neither.
  test_split: str | None
  split_sizes: dict  # examples per split; empty before the dataset is prepared


def _builder(dataset, data_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _hide_gpus_from_tensorflow()
  return tfds.builder(dataset, data_dir=data_dir or None)


def dataset_info(dataset, data_dir=None, image_size=0):
  """The `DatasetInfo` of a TFDS image-classification dataset (registered, or prepared in
  `data_dir` by import_folder); `image_size` > 0: images resized to that square on load.
  Reads metadata only: works before the dataset is prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  info = _builder(dataset, data_dir).info
  height, width, channels = info.features["image"].shape
  if image_size > 0:
    height = width = image_size
  elif height is None or width is None:
    raise MixedSizesError(f"{dataset}'s images have no one size: set it to resize them "
                          "when loading")
  names = class_names(dataset, data_dir)
  label = info.features["label"]
  num_classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else None
  sizes = {name: info.splits[name].num_examples for name in info.splits.keys()}
  test_split = next((s for s in ("test", "validation") if s in sizes), None)
  if not sizes:  # not prepared yet: TFDS's convention until the splits are known
    test_split = "test"
  return DatasetInfo(name=dataset, image_shape=(height, width, channels or 3),
                     num_classes=num_classes, class_names=names, test_split=test_split,
                     split_sizes=sizes)


def prepare_command(dataset, data_dir=None):
  """How to prepare `dataset` on a machine without internet, as a line to show the user."""
  target = f" --data_dir {data_dir}" if data_dir else ""
  if dataset in IDX_DATASETS:
    return (f"Import it from the canonical IDX files with:\n"
            f"  python -m cl_jax.data.import_idx --src DIR_WITH_IDX_FILES --dataset {dataset}"
            + target)
  if is_registered(dataset):
    return (f"Prepare it where TFDS can download it (`tfds build {dataset}{target}`) and copy "
            "the data dir here (or import images of your own under another name with "
            "python -m cl_jax.data.import_folder)")
  return (f"Import it from a folder of images, one sub-folder per class, with:\n"
          f"  python -m cl_jax.data.import_folder --src DIR --name {dataset}" + target)


def _is_prepared(dataset, data_dir):
  """Whether `data_dir` holds a prepared copy of `dataset` (e.g. from import_folder)."""
  try:
    return _builder(dataset, data_dir).is_prepared()
  except Exception:  # pylint: disable=broad-except  (TFDS raises several kinds)
    return False


def is_registered(dataset):
  """Whether TFDS has a builder for `dataset` ("name", "name/config" or "name:version")."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    tfds.builder_cls(dataset.split("/")[0].split(":")[0])
  except Exception:  # pylint: disable=broad-except  (TFDS raises several kinds)
    return False
  return True


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    """The examples at `index` (a slice or an index array), as a Split."""
    return Split(images=self.images[index], labels=self.labels[index])

  @property
  def image_shape(self):
    """(H, W, C) of every image."""
    return self.images.shape[1:]

  def with_labels(self, labels):
    """The same images with `labels` instead."""
    return Split(images=self.images, labels=labels)

  def unlabelled(self):
    """The same images with every label hidden (-1)."""
    return self.with_labels(np.full(len(self), -1, self.labels.dtype))

  def concatenate(self, other):
    """This split's examples followed by `other`'s."""
    return Split(images=np.concatenate([self.images, other.images]),
                 labels=np.concatenate([self.labels, other.labels]))

  def fingerprint(self):
    """SHA-256 (hex) of the images and labels in order: names exactly this data."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(self.images).tobytes())
    digest.update(np.ascontiguousarray(self.labels, np.int32).tobytes())
    return digest.hexdigest()


def to_float(images):
  """uint8 pixels as float32 in [0, 1]; NumPy and jax arrays alike."""
  return images.astype("float32") / 255.0


def example_digest(image, label):
  """SHA-256 of one example's (uint8 image bytes, int32 label): what orders a split."""
  return hashlib.sha256(np.ascontiguousarray(image).tobytes() + np.int32(label).tobytes()).digest()


def order_by_digest(digests):
  """Indices sorting examples by their `example_digest`s; stable for equal ones."""
  return np.array(sorted(range(len(digests)), key=digests.__getitem__), np.int64)


def canonical_order(images, labels):
  """Indices sorting examples by SHA-256 of (image bytes, int32 label); stable for equal ones."""
  return order_by_digest([example_digest(image, label) for image, label in zip(images, labels)])


def _hide_gpus_from_tensorflow():
  # TF is only a reader here; without this it would grab accelerator memory.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


def resize(image, image_size):
  """tf.image's antialiased bilinear resize to `image_size` square, rounded to uint8."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  image = tf.image.resize(image, (image_size, image_size), antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def source_examples(source, resize_to=0, chunk=1024):
  """(uint8 image [H, W, C], label) of every example of a TFDS data source, in its stored
  order, read `chunk` at a time; the images resized to `resize_to` square where it is > 0."""
  for first in range(0, len(source), chunk):
    for example in read_examples(source, range(first, min(first + chunk, len(source)))):
      image = np.asarray(example["image"], np.uint8)
      yield (resize(image, resize_to).numpy() if resize_to > 0 else image), example["label"]


def read_examples(source, keys):
  """The examples of a random-access source at `keys`, in one batched read where the source
  has one (TFDS's data sources: `__getitems__`)."""
  keys = [int(k) for k in keys]
  if hasattr(source, "__getitems__"):
    return source.__getitems__(keys)
  return [source[k] for k in keys]


def record_source(builder, split, image_size):
  """(the TFDS data source of `split` of a builder prepared as ArrayRecord files, the size
  its images are resized to as they are read: `image_size` where they have no one size,
  else 0); MixedSizesError where they have none and `image_size` is 0, ValueError where the
  split is empty."""
  mixed = None in builder.info.features["image"].shape[:2]
  if mixed and image_size <= 0:
    raise MixedSizesError(f"{builder.name}'s images have no one size: set config.image_size "
                          "to resize them when loading")
  source = builder.as_data_source(split=split)
  if not len(source):
    raise ValueError(f"{builder.name}: split {split!r} is empty")
  return source, image_size if mixed else 0


def _read(builder, split, image_size):
  """The whole split as (uint8 images [N, H, W, C], int32 labels [N]); images of mixed
  sizes are resized to `image_size` square as they are read."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  mixed = None in builder.info.features["image"].shape[:2]
  if mixed and image_size <= 0:
    raise MixedSizesError(f"{builder.name}'s images have no one size: set config.image_size "
                          "to resize them when loading")
  if is_array_record(builder):  # TFDS reads these through a data source only
    source, resize_to = record_source(builder, split, image_size)
    images, labels = None, np.empty(len(source), np.int32)
    for i, (image, label) in enumerate(source_examples(source, resize_to)):
      if images is None:
        images = np.empty((len(source),) + image.shape, np.uint8)
      images[i], labels[i] = image, label
    return images, labels
  dataset = builder.as_dataset(split=split, shuffle_files=False)
  if mixed:
    dataset = dataset.map(lambda e: {"image": resize(e["image"], image_size),
                                     "label": e["label"]})
  dataset = dataset.map(lambda e: {"image": e["image"], "label": e["label"]}).batch(4096)
  images, labels = [], []
  for batch in tfds.as_numpy(dataset):
    images.append(np.asarray(batch["image"], np.uint8))
    labels.append(np.asarray(batch["label"], np.int32))
  if not images:
    raise ValueError(f"{builder.name}: split {split!r} is empty")
  return np.concatenate(images), np.concatenate(labels)


def load_split(dataset, split, data_dir=None, max_examples=-1, download=False, image_size=0):
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
    image_size: > 0: resize every image to this square (datasets of mixed sizes).
  """
  builder = prepared_builder(dataset, data_dir, download)
  images, labels = _read(builder, split, image_size)
  # The order of the stored images, so that a resize keeps "the first N" the same images
  # (images of mixed sizes are resized as they are read, so theirs is of the resized ones).
  order = canonical_order(images, labels)
  if max_examples >= 0:
    order = order[:max_examples]
  images = images[order]
  if image_size > 0 and images.shape[1:3] != (image_size, image_size):
    images = np.concatenate([resize(images[i:i + 4096], image_size).numpy()
                             for i in range(0, len(images), 4096)])
  return Split(images=images, labels=labels[order])


def prepared_builder(dataset, data_dir=None, download=False, file_format=None):
  """The TFDS builder of `dataset`, prepared (downloaded first where `download` allows and
  its host answers, in `file_format`: TFDS's default if None); raises
  DatasetNotPreparedError, saying how to prepare it, otherwise."""
  data_dir = data_dir or None
  if not is_registered(dataset) and not _is_prepared(dataset, data_dir):
    raise DatasetNotPreparedError(f"TFDS knows no dataset '{dataset}' and none is prepared "
                                  f"in {data_dir or 'TFDS default data dir'}. "
                                  f"{prepare_command(dataset, data_dir)}")
  builder = _builder(dataset, data_dir)
  if not builder.is_prepared():
    fix = prepare_command(dataset, data_dir)
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
      builder.download_and_prepare(file_format=file_format)
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetNotPreparedError(
          f"TFDS dataset '{dataset}' is not prepared in {builder.data_dir} and could not be "
          f"downloaded ({type(e).__name__}). {fix}") from e
  return builder


def is_array_record(builder):
  """Whether a prepared builder's files are ArrayRecord (random access: `as_data_source`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return builder.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD


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
  label = _builder(dataset, data_dir).info.features["label"]
  return list(label.names) if isinstance(label, tfds.features.ClassLabel) else None


def split_name(config, split, data_dir):
  """The TFDS name of `split` of config.dataset: itself, or for "test" the dataset's test
  split (`DatasetInfo.test_split`)."""
  if split == "test":
    return dataset_info(config.dataset, data_dir, config.image_size).test_split
  return split


def load_for(config, split, data_dir, max_examples=-1):
  """`load_split` of config.dataset with the config's download and resize settings; `split`
  names a TFDS split, or "test" the dataset's test split (`split_name`)."""
  split = split_name(config, split, data_dir)
  return load_split(config.dataset, split, data_dir, max_examples,
                    download=config.data_download, image_size=config.image_size)


def default_data_dir():
  """TFDS data dir from the environment, or None for TFDS's own default."""
  return os.environ.get(TFDS_DATA_DIR_ENV) or None
