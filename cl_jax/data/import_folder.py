"""Turns a folder of images, one sub-folder per class, into a prepared TFDS dataset.

  python -m cl_jax.data.import_folder --src DIR --name NAME [--data_dir TFDS_DIR]
      [--channels 3] [--image_size 0] [--test_fraction 0.2]

DIR is either TFDS's ImageFolder layout, DIR/train/CLASS/*.png and DIR/test/CLASS/*.png
(read by `tfds.folder_dataset.ImageFolder`), or DIR/CLASS/*.png alone, of which the
first `test_fraction` in the canonical order (cl_jax/data) becomes the test split.
Afterwards `--config.dataset=NAME --config.data_dir=TFDS_DIR` trains on it. Images of
several sizes need --image_size (resized to that square here).
"""

import argparse
import os
import sys
import tempfile

import numpy as np

from cl_jax import data

SPLITS = ("train", "test")


def _read_image_folder(root, channels, image_size, splits=SPLITS):
  """{split: (images, labels)} of `splits` and the class names of an ImageFolder layout."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.folder_dataset.ImageFolder(root, shape=(None, None, channels))
  names = builder.info.features["label"].names
  read = {}
  for split in splits:
    images, labels = [], []
    for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
      image = example["image"]
      if image_size > 0:
        image = data.resize(image, image_size).numpy()
      images.append(image)
      labels.append(example["label"])
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
      raise ValueError(f"{root}/{split}: images of {len(sizes)} sizes ({sorted(sizes)[:3]}...); "
                       "pass --image_size to resize them")
    read[split] = (np.stack(images).astype(np.uint8), np.array(labels, np.int64))
  return read, names


def import_folder(src, name, data_dir=None, channels=3, image_size=0, test_fraction=0.2):
  """Stores the images under `src` as TFDS dataset `name` in `data_dir`; returns the data
  dir. Labels are the class folders' names in sorted order (ImageFolder's)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  if data.is_registered(name):
    raise ValueError(f"--name {name}: a dataset TFDS registers; its builder, not these "
                     "images, would be read under that name: choose another")
  present = [split for split in ("train", "test", "validation", "val")
             if os.path.isdir(os.path.join(src, split))]
  if present and sorted(present) != sorted(SPLITS):
    raise ValueError(f"{src}: holds {', '.join(present)}/; need both train/ and test/ "
                     "(TFDS's ImageFolder layout) or class folders only")
  if present:
    splits, names = _read_image_folder(src, channels, image_size)
  else:  # class folders only: read them as one split, then hold out the test split
    with tempfile.TemporaryDirectory() as layout:
      os.symlink(os.path.abspath(src), os.path.join(layout, "train"))
      splits, names = _read_image_folder(layout, channels, image_size, ("train",))
    images, labels = splits["train"]
    order = data.canonical_order(images, labels.astype(np.int32))
    held_out = int(round(test_fraction * len(order)))
    if not 0 < held_out < len(order):
      raise ValueError(f"--test_fraction={test_fraction}: holds out {held_out} of "
                       f"{len(order)} images")
    splits = {"test": (images[order[:held_out]], labels[order[:held_out]]),
              "train": (images[order[held_out:]], labels[order[held_out:]])}
  shape = splits["train"][0].shape[1:]
  features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=shape),
                                         "label": tfds.features.ClassLabel(names=names)})
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={split: tf.data.Dataset.from_tensor_slices(
          {"image": images, "label": labels}) for split, (images, labels) in splits.items()},
      description=f"{name}, imported from the image folders in {src}.",
      disable_shuffling=True)
  for split, (images, _) in splits.items():
    print(f"{name}/{split}: {len(images)} images of {images.shape[1:]}")
  print(f"prepared {name} ({len(names)} classes) in {builder.data_dir}")
  return builder.data_dir


def main():
  # argparse, not absl flags: import_idx's module-level flags would clash in one process.
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--src", required=True, help="folder of class folders, or of train/ and test/")
  parser.add_argument("--name", required=True, help="name to store the dataset under")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir to write into")
  parser.add_argument("--channels", type=int, default=3, choices=(1, 3),
                      help="channels to decode the images to")
  parser.add_argument("--image_size", type=int, default=0, help="resize to this square; 0 = keep")
  parser.add_argument("--test_fraction", type=float, default=0.2,
                      help="without train/ and test/: the fraction held out as the test split")
  args = parser.parse_args()
  try:
    import_folder(args.src, args.name, args.data_dir, args.channels, args.image_size,
                  args.test_fraction)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
