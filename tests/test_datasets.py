"""Datasets of any shape and encoders by name, end to end through the real path
(`trainer.train_and_evaluate`, TFDS reading, checkpoints, the evaluation) on fake copies
of registered TFDS datasets (tests/fake_datasets.py), as the Flax examples' train_test.py
does; and the dataset metadata, the resize, the folder import and the errors."""

import json
import os

import jax
import numpy as np
import pytest

from cl_jax import config_files
from cl_jax import data
from cl_jax import methods
from cl_jax import trainer
from cl_jax.data import import_folder
from tests import fake_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_CONFIGS = config_files.load(os.path.join(ROOT, "configs", "__init__.py")).METHOD_CONFIGS
ENCODERS = ("simple_cnn", "resnet18", "vit_tiny")


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
  """28x28x1 (fashion_mnist), 32x32x3 (cifar10) and 96x96x3 with an unlabelled split
  (stl10), stored as the registered datasets."""
  data_dir = tmp_path_factory.mktemp("fake_tfds")
  fake_datasets.store("cifar10", data_dir, {"train": 64, "test": 40})
  fake_datasets.store("fashion_mnist", data_dir, {"train": 64, "test": 40}, seed=10)
  fake_datasets.store("stl10", data_dir, {"train": 48, "test": 40, "unlabelled": 32}, seed=20)
  return str(data_dir)


def tiny_config(data_dir, dataset="cifar10", method="simclr", encoder="simple_cnn",
                num_devices=1, **overrides):
  """The method's own config file on `dataset`, with a tiny encoder and evaluation: 16
  validation images, batches of 16, one epoch."""
  config = config_files.load(os.path.join(ROOT, "configs", f"{METHOD_CONFIGS[method]}.py"))
  config = config.get_config()
  config.dataset, config.data_dir, config.data_download = dataset, data_dir, False
  config.validation_examples, config.batch_size, config.num_epochs = 16, 16, 1
  config.num_devices, config.progress_bar = num_devices, False
  config.log_every_steps, config.checkpoint_every_steps = 1, 2
  config.monitor_bank_size, config.monitor_query_size = 32, 16
  config.eval_batch_size, config.tsne_points, config.queue_size = 32, 40, 32
  config.model.encoder = encoder
  config.model.width, config.model.vit_depth, config.model.patch_size = 4, 1, 4
  if encoder == "vit_tiny":
    config.model.width = 8
  if encoder != "simple_cnn":
    config.model.kernels = "auto"
  config.augment.shear_degrees = config.augment.elastic_alpha = 0.0
  for field, value in overrides.items():
    *parents, name = field.split(".")
    target = config
    for parent in parents:
      target = target[parent]
    target[name] = value
  return config


def read_results(workdir):
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.long
@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_every_method_trains_every_encoder_on_colour_images(fake_dir, tmp_path, method, encoder):
  """32x32x3 on 4 devices: 2 steps and a checkpoint, a resume to the end of the epoch, the
  evaluation; every metric is a number and the report is written."""
  config = tiny_config(fake_dir, method=method, encoder=encoder, num_devices=4, max_steps=2,
                       evaluate_at_end=False)
  workdir = str(tmp_path / "run")
  first = trainer.train_and_evaluate(config, workdir)
  assert first["steps"] == 2
  config.max_steps, config.evaluate_at_end = -1, True
  results = trainer.train_and_evaluate(config, workdir)
  # 64 images in steps of 16; a label-reading method leaves the 16 validation ones out.
  steps = 3 if methods.get(method).uses_labels else 4
  assert results["resumed_from_step"] == 2 and results["steps"] == steps
  for key in ("validation_knn", "validation_linear_probe", "knn_train_test", "linear_probe",
              "knn_seed"):
    assert 0.0 <= results[key] <= 1.0, key
  assert np.isfinite(results["final_loss"])
  assert os.path.exists(os.path.join(workdir, "report.md"))


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_resumed_run_equals_an_uninterrupted_one(fake_dir, tmp_path, encoder):
  """Stopped at step 2 and resumed, on 1 device: the parameters of the run that was never
  stopped, bit for bit (BatchNorm's running averages included: params_sha256 is of the
  parameters, the checkpoints' batch_stats are compared too)."""
  config = tiny_config(fake_dir, encoder=encoder, evaluate_at_end=False, eval_every_epochs=0)
  whole = trainer.train_and_evaluate(config, str(tmp_path / "whole"))
  config.max_steps = 2
  trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.max_steps = -1
  resumed = trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["resumed_from_step"] == 2
  assert resumed["params_sha256"] == whole["params_sha256"]
  from cl_jax import checkpointing  # pylint: disable=g-import-not-at-top
  trees = [checkpointing.Checkpointer(str(tmp_path / name)).restore_tree(4)
           for name in ("whole", "resumed")]
  stats = [tree.get("batch_stats") for tree in trees]
  assert (stats[0] is None) == (encoder != "resnet18")  # only the ResNet has BatchNorm
  jax.tree.map(np.testing.assert_array_equal, stats[0], stats[1])


@pytest.mark.slow
def test_grayscale_images_through_a_resnet_and_a_vit(fake_dir, tmp_path):
  """28x28x1: a ResNet-18 with the ImageNet stem and a ViT of 7x7 patches, 2 devices."""
  for encoder, fields in (("resnet18", {"model.resnet_stem": "imagenet"}),
                          ("vit_tiny", {"model.patch_size": 7})):
    config = tiny_config(fake_dir, dataset="fashion_mnist", encoder=encoder, num_devices=2,
                         **fields)
    results = trainer.train_and_evaluate(config, str(tmp_path / encoder))
    assert results["steps"] == 4 and 0.0 <= results["knn_train_test"] <= 1.0


@pytest.mark.slow
def test_stl10_pre_trains_on_its_unlabelled_split_too(fake_dir, tmp_path):
  """96x96x3: label-free pre-training on the 48 training images and the 32 unlabelled ones
  (5 steps of 16, against 3 without them); the evaluation reads the labelled splits only."""
  config = tiny_config(fake_dir, dataset="stl10", encoder="resnet18",
                       unlabelled_split="unlabelled", eval_every_epochs=0, **{
                           "model.resnet_stem": "imagenet",
                           "augment.blur_probability": (1.0, 0.1),
                           "augment.solarize_probability": (0.0, 0.2)})
  results = trainer.train_and_evaluate(config, str(tmp_path / "stl10"))
  assert results["steps"] == 5
  assert results["data_fingerprints"]["test"] == data.load_split(
      "stl10", "test", fake_dir).fingerprint()
  train, validation, rest = trainer.load_training_data(config, fake_dir)
  assert len(train) == 80 and len(validation) == 16 and len(rest) == 32
  assert (train.labels[48:] == -1).all() and (rest.labels >= 0).all()


def test_prepared_datasets_are_checked_against_their_splits(fake_dir):
  """Once a dataset is prepared its split sizes are known, so a k too large for the seed
  protocol's fit set (80% of 40 test images: 32) and a missing unlabelled split are
  refused before any training (they failed at the end of the run before)."""
  from cl_jax import config_validation, default_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(fake_dir, knn_k=33, monitor_bank_size=40)
  with pytest.raises(config_validation.ConfigError, match=r"config.knn_k=33: must be <= 32 "
                     r"\(the seed protocol's fit set: 80% of the 40 test images\)"):
    config_validation.validate(config, 1, default_config.get_config())
  config = tiny_config(fake_dir, unlabelled_split="unlabelled")
  with pytest.raises(config_validation.ConfigError, match="config.unlabelled_split="
                     "'unlabelled': cifar10 has no such split \\(splits: test, train\\)"):
    config_validation.validate(config, 1, default_config.get_config())
  config = tiny_config(fake_dir, unlabelled_split="test")  # pre-training on test images
  with pytest.raises(config_validation.ConfigError, match="must be a split other than"):
    config_validation.validate(config, 1, default_config.get_config())
  config_validation.validate(tiny_config(fake_dir, dataset="stl10",
                                         unlabelled_split="unlabelled"), 1,
                             default_config.get_config())


def test_registered_names_with_a_config_or_version_are_registered():
  assert data.is_registered("imagenette/320px-v2") and data.is_registered("cifar10:3.0.2")
  assert not data.is_registered("my_own_images")


def test_dataset_info_from_the_tfds_metadata(fake_dir):
  info = data.dataset_info("stl10", fake_dir)
  assert info.image_shape == (96, 96, 3) and info.num_classes == 10
  assert info.test_split == "test"
  assert info.split_sizes == {"train": 48, "test": 40, "unlabelled": 32}
  assert data.dataset_info("cifar10", fake_dir, image_size=16).image_shape == (16, 16, 3)
  assert data.dataset_info("fashion_mnist", fake_dir).image_shape == (28, 28, 1)
  # imagenette's images have no one size (metadata only: not prepared here).
  with pytest.raises(data.MixedSizesError, match="set it to resize them"):
    data.dataset_info("imagenette", fake_dir)
  assert data.dataset_info("imagenette", fake_dir, image_size=64).image_shape == (64, 64, 3)


def halve(images, axis):
  """Antialiased bilinear halving along `axis`: a triangle filter two output pixels wide,
  input weights 1/8, 3/8, 3/8, 1/8 about each output pixel, renormalised at the borders."""
  x = np.moveaxis(images.astype(np.float64), axis, 0)
  out = []
  for i in range(x.shape[0] // 2):
    taps = [(j, w) for j, w in zip(range(2 * i - 1, 2 * i + 3), (1, 3, 3, 1))
            if 0 <= j < x.shape[0]]
    out.append(sum(w * x[j] for j, w in taps) / sum(w for _, w in taps))
  return np.moveaxis(np.stack(out), 0, axis)


def test_resize_on_load(fake_dir):
  """image_size resizes every image after the canonical order is taken (so the first N are
  the same images at any size), with antialiased bilinear filtering: against a NumPy
  triangle filter, within the uint8 rounding."""
  full = data.load_split("cifar10", "train", fake_dir)
  small = data.load_split("cifar10", "train", fake_dir, image_size=16)
  assert small.images.shape == (64, 16, 16, 3)
  np.testing.assert_array_equal(small.labels, full.labels)
  expected = halve(halve(full.images, 1), 2)
  assert np.abs(small.images - expected).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("dataset, expected", [
    ("mnist", "python -m cl_jax.data.import_idx --src DIR_WITH_IDX_FILES --dataset mnist"),
    ("fashion_mnist", "cl_jax.data.import_idx --src DIR_WITH_IDX_FILES --dataset fashion_mnist"),
    ("cifar10", "tfds build cifar10"),
    ("stl10", "(or import images of your own under another name with python -m "
              "cl_jax.data.import_folder)"),
    ("my_own_images", "python -m cl_jax.data.import_folder --src DIR --name my_own_images"),
])
def test_the_not_prepared_error_names_the_command_that_fits(tmp_path, dataset, expected):
  with pytest.raises(data.DatasetNotPreparedError) as info:
    data.load_split(dataset, "train", str(tmp_path / "empty"), download=False)
  assert expected in str(info.value)


def write_images(root, shape_of, count=6):
  from PIL import Image  # pylint: disable=g-import-not-at-top  (matplotlib's dependency)
  rng = np.random.default_rng(0)
  for class_index, name in enumerate(("cat", "dog", "eel")):
    os.makedirs(os.path.join(root, name))
    for i in range(count):
      pixels = rng.integers(0, 50, shape_of(i)).astype(np.uint8) + 60 * class_index
      Image.fromarray(pixels.squeeze()).save(os.path.join(root, name, f"{i}.png"))


def test_a_folder_of_class_folders_becomes_a_dataset(tmp_path):
  """Labels are the sorted folder names; the first 20% in the canonical order are the test
  split; the pixels are the files' exactly (PNG is lossless)."""
  src = str(tmp_path / "pets")
  write_images(src, lambda i: (10, 12, 3))
  data_dir = import_folder.import_folder(src, "my_pets", str(tmp_path / "tfds"))
  del data_dir
  info = data.dataset_info("my_pets", str(tmp_path / "tfds"))
  assert info.class_names == ["cat", "dog", "eel"] and info.image_shape == (10, 12, 3)
  train = data.load_split("my_pets", "train", str(tmp_path / "tfds"))
  test = data.load_split("my_pets", "test", str(tmp_path / "tfds"))
  assert len(test) == 4 and len(train) == 14
  from PIL import Image  # pylint: disable=g-import-not-at-top
  files = {np.asarray(Image.open(os.path.join(src, c, f))).tobytes(): label
           for label, c in enumerate(("cat", "dog", "eel")) for f in os.listdir(os.path.join(src, c))}
  for split in (train, test):
    for image, label in zip(split.images, split.labels):
      assert files[image.tobytes()] == label


def test_the_folder_import_refuses_what_it_would_misread(tmp_path):
  """A registered name (its builder, not the images, would be read) and a folder with
  train/ but no test/ (its split folders would become classes)."""
  src = tmp_path / "pets"
  write_images(str(src / "train"), lambda i: (8, 8, 3), count=2)
  with pytest.raises(ValueError, match="a dataset TFDS registers"):
    import_folder.import_folder(str(src), "cifar10", str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="holds train/; need both train/ and test/"):
    import_folder.import_folder(str(src), "my_pets", str(tmp_path / "tfds"))


def test_a_train_test_folder_of_mixed_sizes_needs_a_resize(tmp_path):
  src = tmp_path / "gray"
  for split in ("train", "test"):
    write_images(str(src / split), lambda i: (8 + i % 2, 8, 1), count=4)
  with pytest.raises(ValueError, match="pass --image_size"):
    import_folder.import_folder(str(src), "gray", str(tmp_path / "tfds"), channels=1)
  import_folder.import_folder(str(src), "gray", str(tmp_path / "tfds2"), channels=1,
                              image_size=6)
  info = data.dataset_info("gray", str(tmp_path / "tfds2"))
  assert info.image_shape == (6, 6, 1)
  assert len(data.load_split("gray", "test", str(tmp_path / "tfds2"))) == 12


@pytest.mark.slow
def test_the_readme_folder_commands_train_on_your_own_images(tmp_path):
  """The README's two commands, as a user runs them: import a folder of class folders, then
  train configs/generic.py on it (a few steps, 2 devices)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  src = str(tmp_path / "shapes")
  write_images(src, lambda i: (16, 16, 3), count=16)
  tfds_dir = str(tmp_path / "tfds")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  subprocess.run([sys.executable, "-m", "cl_jax.data.import_folder", "--src", src, "--name",
                  "my_images", "--data_dir", tfds_dir], check=True, env=env, cwd=ROOT,
                 capture_output=True)
  workdir = str(tmp_path / "run")
  out = subprocess.run(
      [sys.executable, "-m", "cl_jax.train", "--config", "configs/generic.py",
       "--config.dataset=my_images", f"--config.data_dir={tfds_dir}", "--workdir", workdir,
       "--config.validation_examples=8", "--config.batch_size=8", "--config.max_steps=3",
       "--config.eval_every_epochs=0", "--config.progress_bar=False",
       "--config.eval_batch_size=16", "--config.tsne_points=10"],
      env=env, cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  results = read_results(workdir)
  assert results["steps"] == 3 and 0.0 <= results["validation_knn"] <= 1.0
  assert results["data_fingerprints"]["train"] == data.load_split(
      "my_images", "train", tfds_dir).fingerprint()
