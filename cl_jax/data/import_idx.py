"""Turns canonical IDX files into a prepared TFDS dataset, for machines without internet.

  python -m cl_jax.data.import_idx --src DIR [--dataset mnist] [--data_dir TFDS_DIR]

Afterwards `tfds.load(dataset, data_dir=TFDS_DIR)` reads the data offline.
"""

import sys

from absl import app
from absl import flags

from cl_jax.data import idx

_SRC = flags.DEFINE_string("src", None, "Folder with the four IDX files (.gz or not).",
                           required=True)
_DATASET = flags.DEFINE_string("dataset", "mnist",
                               "Registered TFDS name whose layout the files follow.")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "TFDS data dir to write into (default: TFDS's own default).")
_FILE_FORMAT = flags.DEFINE_enum("file_format", None, ["tfrecord", "array_record"],
                                 "TFDS file format (default: TFDS's, tfrecord); array_record "
                                 "for the streamed training path (config.data_placement).")


def import_idx(src_dir, dataset="mnist", data_dir=None, file_format=None):
  """Verifies the IDX files in `src_dir` and stores them as TFDS dataset `dataset`, in
  `file_format` (TFDS's default, TFRecord, if None; "array_record" for the streamed path).

  The version and features are those of the registered TFDS builder, so the
  ordinary `tfds.load(dataset)` code path finds and reads the result. Returns
  the data dir written to.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")
  builder_cls = tfds.builder_cls(dataset)
  registered = tfds.builder(dataset, data_dir=data_dir)
  features = registered.info.features
  image_shape = tuple(features["image"].shape)
  num_classes = features["label"].num_classes

  split_datasets = {}
  for split in ("train", "test"):
    images, labels = idx.read_idx_split(src_dir, split, num_classes)
    if images.shape[1:] != image_shape:
      raise idx.IdxFormatError(
          f"{src_dir}: {split} images are {images.shape[1:]}, {dataset} expects {image_shape}")
    split_datasets[split] = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels.astype("int64")})
    print(f"{dataset}/{split}: {len(images)} examples read from {src_dir}")

  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=dataset,
      version=str(builder_cls.VERSION),
      features=features,
      split_datasets=split_datasets,
      data_dir=data_dir,
      description=f"{dataset}, imported offline from IDX files in {src_dir}.",
      # Keep the files' order: evaluation protocols such as "first 8,000 test
      # images" refer to the canonical order.
      disable_shuffling=True,
      file_format=file_format,
  )
  print(f"prepared {dataset} {builder_cls.VERSION} in {builder.data_dir}")
  return builder.data_dir


def main(argv):
  del argv
  try:
    import_idx(_SRC.value, _DATASET.value, _DATA_DIR.value, _FILE_FORMAT.value)
  except (idx.IdxFormatError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
