"""cl_jax.evaluator and the cl_jax.evaluate command, after a short real-MNIST run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cl_jax import data
from cl_jax import evaluation
from cl_jax import models
from cl_jax import trainer
from configs import mnist_seed


def short_config(data_dir, cache):
  config = mnist_seed.get_config()
  config.data_dir = data_dir
  config.cache_dir = cache
  config.progress_bar = False
  config.max_train_examples = 2048
  config.batch_size = 128
  config.num_epochs = 2  # the monitor runs after each of the 16-step epochs
  config.num_devices = 2
  config.eval_train_examples = 3000
  config.monitor_bank_size = 2000
  config.monitor_query_size = 500
  config.tsne_points = 300
  return config


@pytest.mark.slow
def test_train_then_evaluate_writes_everything(mnist_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = short_config(mnist_data_dir, str(tmp_path / "cache"))
  results = trainer.train_and_evaluate(config, workdir)
  for name in ("results.json", "report.md", "tsne.png", "loss.png", "knn.png", "config.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  for key in ("knn_seed", "knn_train_test", "knn_train_test_cosine", "linear_probe"):
    assert 0.5 < results[key] <= 1.0, key  # 32 steps already beat chance (0.1) by far
    assert 0.8 < results["raw_pixels"][key] <= 1.0, key
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    monitor = [json.loads(line) for line in f if "knn_monitor" in line]
  assert [m["step"] for m in monitor] == [16, 32]
  with open(os.path.join(workdir, "report.md"), encoding="utf-8") as f:
    report = f.read()
  assert "| k-NN train -> test, cosine |" in report and "tsne.png" in report

  # The command recomputes the same numbers from the checkpoint (deterministic).
  os.remove(os.path.join(workdir, "tsne.png"))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run([sys.executable, "-m", "cl_jax.evaluate", "--workdir", workdir],
                       capture_output=True, text=True, env=env, check=True).stdout
  assert "| k-NN seed (test 8k -> 2k), euclidean |" in out
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    again = json.load(f)
  for key in ("knn_seed", "knn_train_test", "knn_train_test_cosine"):
    assert again[key] == results[key], key
  assert os.path.exists(os.path.join(workdir, "tsne.png"))


def test_evaluate_without_checkpoint_says_so(tmp_path):
  workdir = tmp_path / "empty"
  workdir.mkdir()
  (workdir / "config.json").write_text(mnist_seed.get_config().to_json())
  proc = subprocess.run([sys.executable, "-m", "cl_jax.evaluate", "--workdir", str(workdir)],
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert "no checkpoint in" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_online_monitor_agrees_with_sklearn(mnist_data_dir):
  config = short_config(mnist_data_dir, "")
  train = data.load_split("mnist", "train", mnist_data_dir, 2000)
  test = data.load_split("mnist", "test", mnist_data_dir, 500)
  model = models.create_model(config)
  params = model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)))["params"]
  monitor = trainer.KnnMonitor(model, train, test, config, jax.devices()[:2])
  bank, _ = evaluation.embed(model, params, train.images)
  queries, _ = evaluation.embed(model, params, test.images)
  expected = evaluation.knn_accuracy(bank, train.labels, queries, test.labels, 5, "cosine")
  # Identical predictions expected; one flip of 500 allowed for float32 near-ties.
  assert monitor.accuracy(params) == pytest.approx(expected, abs=1 / 500 + 1e-12)


def test_evaluate_reads_a_config_saved_before_newer_fields_existed():
  """A workdir's config.json from before `model.kernels` and `matmul_precision`: evaluation
  builds the model with their defaults and keeps every saved value."""
  import json  # pylint: disable=g-import-not-at-top
  from cl_jax import default_config, evaluate, models  # pylint: disable=g-import-not-at-top
  saved = json.loads(default_config.get_config().to_json())
  del saved["matmul_precision"], saved["model"]["kernels"]
  saved["model"]["dense_features"], saved["temperature"] = 64, 0.2
  config = evaluate.with_defaults(saved)
  assert config.model.kernels == "auto" and config.matmul_precision == "default"
  assert config.model.dense_features == 64 and config.temperature == 0.2
  models.create_model(config)  # raised AttributeError before
