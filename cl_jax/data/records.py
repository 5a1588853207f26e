"""A TFDS split read example by example from its ArrayRecord files (TFDS's data source), in
the canonical order of `cl_jax.data`, without holding its images in memory: what the
streamed training path (`cl_jax.streaming`) reads each step's examples from.

`RecordSplit` offers what the training code uses of an in-memory `data.Split` (its length,
labels, slicing, hidden labels, concatenation); its images are read only when asked for.
"""

import numpy as np

from cl_jax import data

FILE_FORMAT = "array_record"


class RecordSplit:
  """Examples of TFDS data sources in a given order: example i is `sources[source_ids[i]]`
  at index `indices[i]`, with label `labels[i]` (-1: hidden)."""

  def __init__(self, sources, source_ids, indices, labels, image_shape, image_size):
    self.sources = list(sources)
    self.source_ids = np.asarray(source_ids, np.int32)
    self.indices = np.asarray(indices, np.int64)
    self.labels = np.asarray(labels, np.int32)
    self.image_shape = tuple(image_shape)  # (H, W, C) as read (after any resize)
    self._image_size = image_size  # > 0: images of another size are resized to it on read

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    """The examples at `index` (a slice or an index array), as a RecordSplit (nothing read)."""
    return RecordSplit(self.sources, self.source_ids[index], self.indices[index],
                       self.labels[index], self.image_shape, self._image_size)

  def with_labels(self, labels):
    """The same examples with `labels` instead."""
    return RecordSplit(self.sources, self.source_ids, self.indices, labels, self.image_shape,
                       self._image_size)

  def unlabelled(self):
    """The same examples with every label hidden (-1)."""
    return self.with_labels(np.full(len(self), -1, np.int32))

  def concatenate(self, other):
    """This split's examples followed by `other`'s."""
    if other.image_shape != self.image_shape:
      raise ValueError(f"images of {other.image_shape} cannot follow {self.image_shape}")
    return RecordSplit(self.sources + other.sources,
                       np.concatenate([self.source_ids, other.source_ids + len(self.sources)]),
                       np.concatenate([self.indices, other.indices]),
                       np.concatenate([self.labels, other.labels]), self.image_shape,
                       self._image_size)

  def read(self, positions):
    """The uint8 images [len(positions), H, W, C] of the examples at `positions`."""
    positions = np.asarray(positions, np.int64)
    images = np.empty((len(positions),) + self.image_shape, np.uint8)
    for source_id in np.unique(self.source_ids[positions]):
      rows = np.flatnonzero(self.source_ids[positions] == source_id)
      examples = data.read_examples(self.sources[source_id], self.indices[positions[rows]])
      for row, example in zip(rows, examples):
        images[row] = _sized(example["image"], self._image_size)
    return images

  @property
  def images(self):
    """Every image, read now: for small subsets (the online monitor's)."""
    return self.read(np.arange(len(self)))


def _sized(image, image_size):
  """`image` (uint8 [H, W, C]) resized to `image_size` square as `data.load_split` does, or
  as it is where it has that size already or `image_size` is 0."""
  image = np.asarray(image, np.uint8)
  if image_size > 0 and image.shape[:2] != (image_size, image_size):
    image = data.resize(image, image_size).numpy()
  return image


def load_for(config, split, data_dir):
  """config.dataset's `split` ("test": the dataset's test split) as a RecordSplit in the
  canonical order: the order of `data.load_for`'s, from one pass that reads every example
  once (to hash it; the images are not kept). The dataset must be prepared as ArrayRecord
  files (downloaded so where config.data_download allows)."""
  split = data.split_name(config, split, data_dir)
  builder = data.prepared_builder(config.dataset, data_dir, config.data_download, FILE_FORMAT)
  if not data.is_array_record(builder):
    raise data.DatasetNotPreparedError(
        f"{config.dataset} is prepared in {builder.data_dir} as "
        f"{builder.info.file_format.value} files; the streamed path "
        "(config.data_placement='stream') reads ArrayRecord files: prepare it with "
        f"`tfds build {config.dataset} --file_format={FILE_FORMAT}` (or `python -m "
        f"cl_jax.data.import_idx ... --file_format={FILE_FORMAT}`), or set "
        "config.data_placement='device'")
  # data.load_split orders images of mixed sizes after resizing them, the others before.
  source, resize_to = data.record_source(builder, split, config.image_size)
  digests, labels = [], np.empty(len(source), np.int32)
  for i, (image, label) in enumerate(data.source_examples(source, resize_to)):
    digests.append(data.example_digest(image, label))
    labels[i] = label
  order = data.order_by_digest(digests)
  image_shape = data.dataset_info(config.dataset, data_dir, config.image_size).image_shape
  return RecordSplit([source], np.zeros(len(order), np.int32), order, labels[order],
                     image_shape, config.image_size)
