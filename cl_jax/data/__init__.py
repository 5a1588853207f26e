"""Whole-split in-memory loading of TFDS image-classification datasets."""

import dataclasses
import os

import numpy as np

# The environment variable TFDS itself reads for its data dir.
TFDS_DATA_DIR_ENV = "TFDS_DATA_DIR"


class DatasetNotPreparedError(RuntimeError):
  """TFDS has no prepared copy of the dataset and this machine cannot download it."""


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)


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
    max_examples: keep only the first this many examples; -1 keeps all.
    download: let TFDS download and prepare the dataset when it is missing
      (needs internet; without it TFDS retries for minutes before failing).
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
          f"TFDS dataset '{dataset}' is not prepared in {builder.data_dir}. {fix}\n"
          "(or, with internet access, pass --config.data_download=True)")
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetNotPreparedError(
          f"TFDS dataset '{dataset}' is not prepared in {builder.data_dir} and could not be "
          f"downloaded ({type(e).__name__}). {fix}") from e
  tfds_split = split if max_examples < 0 else f"{split}[:{max_examples}]"
  data = tfds.as_numpy(builder.as_dataset(split=tfds_split, batch_size=-1, shuffle_files=False))
  return Split(images=np.asarray(data["image"], np.uint8),
               labels=np.asarray(data["label"], np.int32))


def default_data_dir():
  """TFDS data dir from the environment, or None for TFDS's own default."""
  return os.environ.get(TFDS_DATA_DIR_ENV) or None
