"""The streamed training path (cl_jax/streaming.py, cl_jax/data/records.py) on fake data
stored as ArrayRecord files through TFDS's own machinery (tests/fake_datasets.py): the same
examples in the same order as the in-memory path, the same parameters, an exact resume,
two processes, and the rule that chooses it."""

import json
import os

import jax
import numpy as np
import pytest

from cl_jax import checkpointing
from cl_jax import config_validation
from cl_jax import data
from cl_jax import streaming
from cl_jax import trainer
from cl_jax.data import records
from cl_jax.evaluator import read_metrics
from tests import conftest
from tests import fake_datasets
from tests import test_multihost
from tests.test_datasets import tiny_config

# 160 training images: 10 steps of 16 an epoch (the validation split's 16 included: the
# label-free default pre-trains on all of them).
SPLITS = {"train": 160, "test": 40}


STL10_SPLITS = {"train": 48, "test": 8, "unlabelled": 32}


def store_both(data_dir, file_format):
  """Fake cifar10 (32x32x3) and stl10 (96x96x3, with an unlabelled split) in `data_dir`."""
  fake_datasets.store("cifar10", data_dir, SPLITS, file_format=file_format)
  fake_datasets.store("stl10", data_dir, STL10_SPLITS, seed=20, file_format=file_format)
  return str(data_dir)


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
  """The fake datasets as ArrayRecord files."""
  return store_both(tmp_path_factory.mktemp("array_record"), "array_record")


@pytest.fixture(scope="module")
def tfrecord_dir(tmp_path_factory):
  """The same examples as TFRecord files (TFDS's default)."""
  return store_both(tmp_path_factory.mktemp("tfrecord"), None)


def test_record_split_reads_what_load_split_loads(record_dir, tfrecord_dir):
  """The same images and labels in the same (canonical) order as the in-memory loader reads
  from the TFRecord files of the same examples (and from the ArrayRecord ones), also
  through slicing, hidden labels, a concatenated unlabelled split and a resize."""
  config = tiny_config(record_dir, dataset="stl10")
  for split in ("train", "test", "unlabelled"):
    loaded = data.load_for(config, split, tfrecord_dir)
    for streamed in (records.load_for(config, split, record_dir),
                     data.load_for(config, split, record_dir)):
      np.testing.assert_array_equal(streamed.images, loaded.images)
      np.testing.assert_array_equal(streamed.labels, loaded.labels)
  train = records.load_for(config, "train", record_dir)
  unlabelled = records.load_for(config, "unlabelled", record_dir)
  both = train[5:].concatenate(unlabelled.unlabelled())
  expected = data.load_for(config, "train", tfrecord_dir)[5:].concatenate(
      data.load_for(config, "unlabelled", tfrecord_dir).unlabelled())
  np.testing.assert_array_equal(both.read(np.array([20, 0, 30])),
                                expected.images[[20, 0, 30]])
  np.testing.assert_array_equal(both.labels, expected.labels)
  assert both.image_shape == expected.image_shape == (96, 96, 3)
  config.image_size = 40  # antialiased down, then read one image at a time
  resized = records.load_for(config, "train", record_dir)
  np.testing.assert_array_equal(resized.images, data.load_for(config, "train", tfrecord_dir).images)


def test_the_streamed_path_refuses_tfrecord_files(tmp_path):
  data_dir = fake_datasets.store("cifar10", tmp_path, {"train": 16, "test": 8})
  with pytest.raises(data.DatasetNotPreparedError, match="--file_format=array_record"):
    records.load_for(tiny_config(data_dir), "train", data_dir)


def test_auto_placement_streams_what_does_not_fit(record_dir, tfrecord_dir, monkeypatch):
  """"auto" streams where the pre-training images (counted here independently: images x
  H x W x C bytes) pass a quarter of the device's memory and the files are ArrayRecord, and
  only there."""
  config = tiny_config(record_dir, dataset="stl10", unlabelled_split="unlabelled")
  size = (STL10_SPLITS["train"] + STL10_SPLITS["unlabelled"]) * 96 * 96 * 3
  info = data.dataset_info("stl10", record_dir)
  assert streaming.pretraining_bytes(info, config) == size
  device = jax.devices()[0]
  for memory, expected in ((4 * size, "device"), (4 * size - 1, "stream")):
    monkeypatch.setattr(streaming, "device_memory_bytes", lambda d, memory=memory: memory)
    assert streaming.placement(config, record_dir, [device]) == expected
  assert streaming.placement(config, tfrecord_dir, [device]) == "device"  # not readable so
  config.max_train_examples = 10  # 10 images fit where 80 did not
  assert streaming.placement(config, record_dir, [device]) == "device"
  config.max_train_examples, config.parallel = -1, "pmap"  # would stream: cannot
  with pytest.raises(config_validation.ConfigError, match="shard_map"):
    streaming.placement(config, record_dir, [device])
  config.parallel, config.data_placement = "pmap", "device"  # said, not chosen: as it is
  assert streaming.placement(config, record_dir, [device]) == "device"


def losses(workdir):
  return [(m["step"], m["loss"]) for m in read_metrics(workdir) if "loss" in m]


@pytest.mark.slow  # ~1 min: three short runs on 4 devices
def test_streamed_run_equals_on_device_run_and_resumes_exactly(record_dir, tmp_path):
  """4 devices, 3 epochs of 10 steps with the online monitor and the final evaluation on:
  the streamed run trains bit for bit the parameters of the on-device one (the same batch at
  each step; one step per call on both, the CPU's automatic choice); stopped mid-epoch at
  step 7 and resumed, it ends with them too."""
  config = lambda **o: tiny_config(record_dir, num_devices=4, num_epochs=3, **o)
  device = trainer.train_and_evaluate(config(data_placement="device"), str(tmp_path / "device"))
  streamed_dir = str(tmp_path / "stream")
  first = trainer.train_and_evaluate(config(data_placement="stream", max_steps=7), streamed_dir)
  assert first["steps"] == 7 and first["data_placement"] == "stream"
  resumed = trainer.train_and_evaluate(config(data_placement="stream"), streamed_dir)
  assert device["data_placement"] == "device" and resumed["resumed_from_step"] == 7
  assert resumed["params_sha256"] == device["params_sha256"]
  assert losses(streamed_dir) == losses(str(tmp_path / "device")) and len(losses(streamed_dir)) == 30
  for key in ("knn_train_test", "validation_knn", "linear_probe", "online_linear_probe"):
    assert resumed[key] == device[key], key


@pytest.mark.slow  # ~1 min: two pairs of short runs
@pytest.mark.parametrize("overrides", [
    # A method that reads labels pre-trains on the training images after the validation split.
    {"method": "supcon"},
    # Label-free with an unlabelled split, the first 64 pre-training images, resized.
    {"dataset": "stl10", "unlabelled_split": "unlabelled", "max_train_examples": 64,
     "image_size": 32},
], ids=["supcon", "stl10_unlabelled_resized"])
def test_streamed_pretraining_split_is_the_on_device_one(record_dir, tmp_path, overrides):
  """Other pre-training splits: the same parameters after an epoch on 2 devices."""
  shas = [trainer.train_and_evaluate(
      tiny_config(record_dir, num_devices=2, evaluate_at_end=False, data_placement=placement,
                  **overrides), str(tmp_path / placement))["params_sha256"]
          for placement in ("device", "stream")]
  assert shas[0] == shas[1]


CONFIG_FILE = """from tests.test_datasets import tiny_config


def get_config():
  return tiny_config({data_dir!r}, num_devices=-1, data_placement="stream")
"""


@pytest.mark.long  # ~2 min: four training processes and a reference run
def test_two_processes_stream_their_shares_stop_together_and_resume(record_dir, tmp_path):
  """2 processes x 2 devices, each reading its own half of every batch, stopped by SIGTERM to
  one process and resumed, equal 1 process x 4 devices holding the data on its devices
  (within Gloo's rounding, tests/test_multihost.py), then evaluate."""
  config_file = tmp_path / "stream_config.py"
  config_file.write_text(CONFIG_FILE.format(data_dir=record_dir))
  workdir = str(tmp_path / "two_processes")
  command = ["cl_jax.train", "--config", str(config_file), "--workdir", workdir]
  cache = str(tmp_path / "cache")
  stopped = test_multihost.preempt_process_1(command, workdir, str(tmp_path / "first"), cache)
  assert stopped[0] == stopped[1] < 10, stopped
  for status, stderr in test_multihost.finish(test_multihost.launch(
      command, str(tmp_path / "resumed"), cache)):
    assert status == 0, stderr[-3000:]
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert results["data_placement"] == "stream" and results["num_devices"] == 4
  assert results["resumed_from_step"] == stopped[0] and 0 < results["knn_train_test"] <= 1

  reference_dir = str(tmp_path / "one_process")
  trainer.train_and_evaluate(tiny_config(record_dir, num_devices=4, data_placement="device"),
                             reference_dir)
  got, expected = losses(workdir), losses(reference_dir)
  assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, 11))
  assert abs(got[0][1] - expected[0][1]) <= test_multihost.FIRST_LOSS_TOLERANCE
  np.testing.assert_allclose([l for _, l in got], [l for _, l in expected], rtol=0,
                             atol=test_multihost.LOSS_TOLERANCE)
  params = checkpointing.Checkpointer(workdir).restore_tree(10)["params"]
  reference = checkpointing.Checkpointer(reference_dir).restore_tree(10)["params"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=0, atol=test_multihost.PARAMS_TOLERANCE), params, reference)


@pytest.mark.slow  # ~1 min: the 70,000 images imported again and read twice
def test_real_mnist_imported_as_array_record_reads_as_the_tfrecord_import(mnist_data_dir,
                                                                         tmp_path):
  """The IDX import with --file_format=array_record: every split, read by the in-memory
  loader and by the records, equals the TFRecord import's (the canonical order included)."""
  from cl_jax.data import import_idx  # pylint: disable=g-import-not-at-top
  record_dir = import_idx.import_idx(os.environ[conftest.MNIST_IDX_ENV], "mnist",
                                     str(tmp_path), file_format="array_record")
  assert any(name.endswith(".array_record-00000-of-00001") for name in os.listdir(record_dir))
  config = tiny_config(str(tmp_path), dataset="mnist")
  for split in ("train", "test"):
    expected = data.load_for(config, split, mnist_data_dir)
    for loaded in (data.load_for(config, split, str(tmp_path)),
                   records.load_for(config, split, str(tmp_path))):
      np.testing.assert_array_equal(loaded.images, expected.images)
      np.testing.assert_array_equal(loaded.labels, expected.labels)
