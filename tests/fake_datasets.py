"""Fake copies of registered TFDS datasets, stored through TFDS's own machinery
(`store_as_tfds_dataset`, with the registered builder's name, version and features), so
that `tfds.builder(name, data_dir)` and every code path after it read them as the real
dataset: any shape, in a subprocess too, without a download.

The images carry their class: each class has its own colour and a bright square at its own
place, on noise, so that a k-NN on good features can tell them apart and one on a
collapsed encoder cannot.
"""

import numpy as np


def class_images(labels, shape, num_classes, seed):
  """uint8 images [N, H, W, C]: noise plus the class's colour and square."""
  rng = np.random.default_rng(seed)
  height, width, channels = shape
  colours = np.random.default_rng(1234).integers(60, 256, (num_classes, channels))
  images = rng.integers(0, 50, (len(labels),) + tuple(shape)).astype(np.int32)
  side = max(2, min(height, width) // 3)
  for i, label in enumerate(labels):
    if label < 0:  # unlabelled: a random class's look
      label = rng.integers(num_classes)
    top = (label * 7) % (height - side + 1)
    left = (label * 3) % (width - side + 1)
    images[i, top:top + side, left:left + side] += colours[label]
  return np.clip(images, 0, 255).astype(np.uint8)


def store(name, data_dir, split_sizes, seed=0, image_shape=None, file_format=None):
  """Stores fake `name` in `data_dir`: {split: number of examples}; a split named
  "unlabelled" gets label -1, as STL-10's; in `file_format` (TFDS's default if None, or
  "array_record"). Returns the data dir."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  registered = tfds.builder(name)
  features = registered.info.features
  shape = image_shape or tuple(features["image"].shape)
  num_classes = features["label"].num_classes
  splits = {}
  for index, (split, count) in enumerate(split_sizes.items()):
    labels = (np.full(count, -1) if split == "unlabelled"
              else np.arange(count) % num_classes).astype(np.int64)
    examples = {"image": class_images(labels, shape, num_classes, seed + index),
                "label": labels}
    for key, feature in features.items():  # the other features a builder declares
      if key not in examples:
        examples[key] = (np.array([f"{split}_{i}" for i in range(count)])
                         if isinstance(feature, tfds.features.Text)
                         else np.zeros((count,) + tuple(feature.shape), feature.np_dtype))
    splits[split] = tf.data.Dataset.from_tensor_slices(examples)
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=str(registered.VERSION), features=features, split_datasets=splits,
      data_dir=str(data_dir), disable_shuffling=True, file_format=file_format)
  return str(data_dir)
