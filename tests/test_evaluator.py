"""cl_jax.evaluator and the cl_jax.evaluate command, after a short real-MNIST run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from cl_jax import data
from cl_jax import default_config
from cl_jax import evaluation
from cl_jax import evaluator
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
  # The 2,048 pre-training images start with the validation split's, whose labels the
  # online probe never sees: half of them are its.
  config.validation_examples = 1024
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
  assert "| test: k-NN train -> test, cosine |" in report and "tsne.png" in report
  assert "| validation: k-NN (rest of train -> validation), euclidean |" in report
  for key in ("validation_knn", "validation_knn_cosine", "validation_linear_probe"):
    assert 0.5 < results[key] <= 1.0 and 0.8 < results["raw_pixels"][key] <= 1.0, key
  # The field's protocols and what training bought: the weighted k-NN, the online probe
  # (trained on 32 steps of batches; seen here ~0.8), the random initialisation's row.
  for key in ("weighted_knn200", "weighted_knn20", "validation_weighted_knn200",
              "validation_weighted_knn20", "online_linear_probe",
              "validation_online_linear_probe"):
    assert 0.5 < results[key] <= 1.0, key
  assert set(results["random_init"]) == set(results["raw_pixels"])
  assert "| metric | this run | its random initialisation | raw pixels |" in report
  assert "| test: weighted k-NN, k = 200 |" in report
  assert "| test: online linear probe |" in report
  assert all("online_probe_monitor" in m for m in monitor)
  logged = [m for m in evaluator.read_metrics(workdir) if "probe_loss" in m]
  assert logged and logged[-1]["probe_loss"] < np.log(10)  # it learns: below chance

  # The command recomputes the same numbers from the checkpoint (deterministic).
  os.remove(os.path.join(workdir, "tsne.png"))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run([sys.executable, "-m", "cl_jax.evaluate", "--workdir", workdir],
                       capture_output=True, text=True, env=env, check=True).stdout
  assert "| test: k-NN seed (test 8k -> 2k), euclidean |" in out
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    again = json.load(f)
  for key in ("knn_seed", "knn_train_test", "knn_train_test_cosine", "validation_knn"):
    assert again[key] == results[key], key
  assert os.path.exists(os.path.join(workdir, "tsne.png"))


@pytest.mark.slow
def test_the_random_initialisation_row_is_the_runs_own_start(mnist_data_dir, tmp_path):
  """A run whose one step cannot move its parameters (learning rate 1e-30: far below
  float32's resolution of every non-zero weight; the zero biases move to 1e-30, which no
  metric sees) evaluates exactly as its random-initialisation row: the row is the
  trainer's initialisation from the same seed, not another draw."""
  config = short_config(mnist_data_dir, str(tmp_path / "cache"))
  config.learning_rate = 1e-30
  config.max_steps = 1
  config.seed = 3
  config.eval_every_epochs = 0
  config.validation_examples = 1000
  config.eval_train_examples = 1000
  config.weighted_knn_k = (20,)
  config.tsne_points = 100
  results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  for key, value in results["random_init"].items():
    assert results[key] == value, key
  config.seed = 4  # another initialisation evaluates differently
  other = trainer.train_and_evaluate(config, str(tmp_path / "other"))
  assert other["random_init"] != results["random_init"]


def test_a_weighted_k_larger_than_the_fit_set_is_left_out():
  """A small dataset (here 30 fit rows for validation, 40 for test) has no weighted k-NN at
  k = 200, but keeps the ks that fit; the rest of the metrics are unchanged."""
  rng = np.random.default_rng(0)
  train_x, train_y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
  test_x, test_y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
  config = default_config.get_config()
  config.validation_examples, config.knn_k, config.weighted_knn_k = 10, 3, (200, 35, 5)
  metrics = evaluator.embedding_metrics(train_x, train_y, test_x, test_y, config)
  assert {k for k in metrics if "weighted" in k} == {
      "weighted_knn35", "weighted_knn5", "validation_weighted_knn5"}
  # scikit-learn's weighted vote: euclidean on unit rows, so similarity = 1 - d^2 / 2.
  weights = lambda d: np.exp((1 - d ** 2 / 2) / 0.1)
  expected = KNeighborsClassifier(n_neighbors=5, algorithm="brute", weights=weights).fit(
      evaluation.normalize_rows(train_x), train_y).score(evaluation.normalize_rows(test_x),
                                                         test_y)
  assert metrics["weighted_knn5"] == pytest.approx(expected, abs=1e-12)


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
  features, projections = {}, {}
  for name, split in (("bank", train), ("queries", test)):
    features[name], projections[name] = evaluation.embed(model, {"params": params}, split.images)
  pixels = lambda split: split.images.reshape(len(split), -1).astype(np.float32)
  expected = {
      "knn_monitor": (features["bank"], features["queries"]),
      "knn_monitor_projection": (projections["bank"], projections["queries"]),
      "knn_monitor_raw_pixels": (pixels(train), pixels(test))}
  got = monitor.accuracies({"params": params})
  assert set(got) == set(expected)
  for key, (bank, queries) in expected.items():
    accuracy = evaluation.knn_accuracy(bank, train.labels, queries, test.labels, 5, "cosine")
    # Identical predictions expected; one flip of 500 allowed for float32 near-ties.
    assert got[key] == pytest.approx(accuracy, abs=1 / 500 + 1e-12), key


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


@pytest.fixture
def closed_figures(monkeypatch):
  """The figures the evaluator's plots close, kept for inspection."""
  figures, close = [], plt.close

  def keep(fig):
    figures.append(fig)
    close(fig)
  monkeypatch.setattr(evaluator.plt, "close", keep)
  return figures


def test_knn_plot_draws_both_monitors_and_the_raw_pixel_line(tmp_path, closed_figures):
  entries = [{"step": 10, "epoch": 1.0, "loss": 3.0},
             {"step": 20, "epoch": 2.0, "knn_monitor": 0.91, "knn_monitor_projection": 0.85,
              "knn_monitor_raw_pixels": 0.95},
             {"step": 40, "epoch": 4.0, "knn_monitor": 0.93, "knn_monitor_projection": 0.88,
              "knn_monitor_raw_pixels": 0.95}]
  evaluator.plot_series(entries, {"knn_monitor": "features", "knn_monitor_projection": "proj"},
                        str(tmp_path / "knn.png"), "accuracy", "monitor",
                        baseline=("knn_monitor_raw_pixels", "raw pixels"))
  assert (tmp_path / "knn.png").stat().st_size > 0
  lines = {line.get_label(): line for line in closed_figures[0].axes[0].lines}
  assert sorted(lines) == ["features", "proj", "raw pixels"]
  np.testing.assert_array_equal(lines["features"].get_xdata(), [2.0, 4.0])
  np.testing.assert_array_equal(lines["features"].get_ydata(), [0.91, 0.93])
  np.testing.assert_array_equal(lines["proj"].get_ydata(), [0.85, 0.88])
  # A horizontal line across the axes at the pixels' accuracy.
  np.testing.assert_array_equal(lines["raw pixels"].get_ydata(), [0.95, 0.95])
  legend = [t.get_text() for t in closed_figures[0].axes[0].get_legend().get_texts()]
  assert sorted(legend) == ["features", "proj", "raw pixels"]


def test_series_plot_without_the_optional_keys_draws_one_line(tmp_path, closed_figures):
  """A run logged before the projection and raw-pixel monitors: just its one curve."""
  entries = [{"epoch": 1.0, "knn_monitor": 0.5}, {"epoch": 2.0, "knn_monitor": 0.7}]
  evaluator.plot_series(entries, {"knn_monitor": "features", "knn_monitor_projection": "proj"},
                        str(tmp_path / "knn.png"), "accuracy", "monitor",
                        baseline=("knn_monitor_raw_pixels", "raw pixels"))
  (line,) = closed_figures[0].axes[0].lines
  np.testing.assert_array_equal(line.get_ydata(), [0.5, 0.7])
  assert closed_figures[0].axes[0].get_legend() is None


@pytest.mark.parametrize("names, expected", [(["zero", "one", "two"], ["zero", "one", "two"]),
                                             (None, ["0", "1", "2"])])
def test_tsne_legend_names_the_classes(tmp_path, closed_figures, names, expected):
  labels = np.array([2, 0, 1, 2, 0])
  evaluator.plot_tsne(np.arange(10.0).reshape(5, 2), labels, str(tmp_path / "t.png"), names)
  legend = closed_figures[0].axes[0].get_legend().get_texts()
  assert [t.get_text() for t in legend] == expected  # classes in label order


def test_positive_pairs_are_the_images_under_an_identity_augmentation():
  config = default_config.get_config()
  config.augment.crop_scale, config.augment.crop_ratio = (1.0, 1.0), (1.0, 1.0)
  config.augment.rotation_degrees = 0.0
  images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
  # The full-image crop samples exactly on the pixels: the uint8 round trip is exact.
  np.testing.assert_array_equal(evaluator.positive_pairs(images, config),
                                np.concatenate([images, images]))


def test_positive_pairs_are_two_different_views_and_the_same_every_time():
  config = default_config.get_config()
  images = np.random.default_rng(1).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
  pairs = evaluator.positive_pairs(images, config)
  assert pairs.shape == (12, 28, 28, 1) and pairs.dtype == np.uint8
  np.testing.assert_array_equal(pairs, evaluator.positive_pairs(images, config))
  for first, second in zip(pairs[:6], pairs[6:]):
    assert not np.array_equal(first, second)


def test_representation_diagnostics_use_the_first_points_and_the_pairs(monkeypatch):
  monkeypatch.setattr(evaluator, "DIAGNOSTIC_POINTS", 5)
  rng = np.random.default_rng(2)
  test_z = rng.normal(size=(40, 4))
  test_z[:5] = test_z[0]  # the first 5 collapsed, the rest spread
  a = rng.normal(size=(5, 4))
  same = evaluator.representation_diagnostics(test_z, np.concatenate([a, a]), 0.9)
  # Uniformity of the 5 equal rows only: exactly log mean exp(0) up to rounding.
  assert same["uniformity"] == pytest.approx(0.0, abs=1e-12)
  assert same["alignment"] == pytest.approx(0.0, abs=1e-12)  # each pair is one point
  assert same["effective_rank"] > 1.5  # the whole split: 4 random directions
  assert same["dimension"] == 4 and same["knn_train_test_cosine"] == 0.9
  opposite = evaluator.representation_diagnostics(test_z, np.concatenate([a, -a]), 0.9)
  assert opposite["alignment"] == pytest.approx(4.0, rel=1e-12)  # antipodes: (2)^2


def test_report_table_shows_the_diagnostics():
  found = {"features": {"dimension": 128, "effective_rank": 37.26, "uniformity": -3.1234,
                        "alignment": 0.4567, "knn_train_test_cosine": 0.98765},
           "projections": {"dimension": 64, "effective_rank": 1.04, "uniformity": -0.0012,
                           "alignment": 0.0001, "knn_train_test_cosine": 0.5}}
  table = evaluator.diagnostics_table(found).splitlines()
  assert "| effective rank (of the dimension) | 37.3 of 128 | 1.0 of 64 |" in table
  assert any(line.startswith("| uniformity") and line.endswith("| -3.123 | -0.001 |")
             for line in table)
  assert any(line.startswith("| alignment") and line.endswith("| 0.457 | 0.000 |")
             for line in table)
  assert "| k-NN train -> test, cosine | 98.77% | 50.00% |" in table
  assert any("collapse shows as effective rank near 1" in line for line in table)


def test_validation_metrics_fit_on_the_rest_and_predict_the_validation_rows():
  """validation_* against scikit-learn fit on rows V: and predicting rows :V. Labels are
  random, so a bank that contained the validation rows themselves would score 100% with
  k = 1 (each row its own neighbour) instead of chance."""
  rng = np.random.default_rng(0)
  train_x, train_y = rng.normal(size=(600, 5)).astype(np.float32), rng.integers(0, 4, 600)
  test_size = 500
  test_x = rng.normal(size=(test_size, 5)).astype(np.float32)
  test_y = rng.integers(0, 4, test_size)
  config = default_config.get_config()
  config.validation_examples, config.knn_k = 150, 1
  metrics = evaluator.embedding_metrics(train_x, train_y, test_x, test_y, config)
  for suffix, (fit_x, val_x) in (("", (train_x[150:], train_x[:150])),
                                 ("_cosine", (evaluation.normalize_rows(train_x[150:]),
                                              evaluation.normalize_rows(train_x[:150])))):
    expected = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(
        fit_x, train_y[150:]).score(val_x, train_y[:150])
    assert metrics["validation_knn" + suffix] == pytest.approx(expected, abs=1e-12)
    assert metrics["validation_knn" + suffix] < 0.5  # chance is 0.25; self-matches give 1.0
  scaler = StandardScaler().fit(train_x[150:])
  probe = LogisticRegression(max_iter=2000).fit(scaler.transform(train_x[150:]), train_y[150:])
  assert metrics["validation_linear_probe"] == pytest.approx(
      probe.score(scaler.transform(train_x[:150]), train_y[:150]), abs=0.03)
  # The test keys fit on every training row (the validation ones included).
  expected = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(
      train_x, train_y).score(test_x, test_y)
  assert metrics["knn_train_test"] == pytest.approx(expected, abs=1e-12)


def counted_baseline(monkeypatch, record):
  """Random uint8 train (300) and test (500) splits, and the list to which every call of
  the (stubbed) embedding_metrics appends record(its arguments)."""
  rng = np.random.default_rng(0)
  split = lambda n: data.Split(rng.integers(0, 256, (n, 4, 4, 1)).astype(np.uint8),
                               rng.integers(0, 3, n).astype(np.int32))
  computed = []
  monkeypatch.setattr(evaluator, "embedding_metrics",
                      lambda *args: computed.append(record(args)) or {"knn_seed": 0.5})
  return split(300), split(500), computed


def test_raw_pixel_cache_follows_the_settings_and_the_code(tmp_path, monkeypatch):
  """The cached baseline is reused for the same data, settings and evaluation code, and
  recomputed when any of them changes (before: keyed by the data alone, so a fixed probe
  kept its old baseline)."""
  train, test, computed = counted_baseline(monkeypatch, lambda args: args[-1].to_dict())
  config = default_config.get_config()
  config.cache_dir, config.validation_examples = str(tmp_path), 100
  evaluator.raw_pixel_metrics(train, test, config)
  evaluator.raw_pixel_metrics(train, test, config)
  assert len(computed) == 1  # cached
  config.validation_examples = 50
  evaluator.raw_pixel_metrics(train, test, config)
  assert len(computed) == 2  # another split: another baseline
  monkeypatch.setattr(evaluator, "evaluation_code_version", lambda: "changed")
  evaluator.raw_pixel_metrics(train, test, config)
  assert len(computed) == 3  # other evaluation code: computed again


def test_random_init_cache_is_named_by_the_encoders_variables_and_features(tmp_path, monkeypatch):
  """The random initialisation's metrics are reused for an encoder with the same features
  and recomputed for one with other features (another seed or architecture), on other
  data or under other evaluation code."""
  train, test, computed = counted_baseline(monkeypatch, lambda args: args[0])
  config = default_config.get_config()
  config.cache_dir = str(tmp_path)
  encoder = lambda scale: lambda images: images.reshape(len(images), -1) * scale
  def variables(middle):  # large enough for NumPy to summarise its printout with "..."
    kernel = np.ones((40, 40), np.float32)
    kernel[20, 20] = middle
    return {"params": {"kernel": kernel}}
  evaluator.random_init_metrics(train, test, config, variables(1.0), encoder(1.0))
  evaluator.random_init_metrics(train, test, config, variables(1.0), encoder(1.0))
  assert len(computed) == 1  # cached
  np.testing.assert_array_equal(computed[0], train.images.reshape(300, -1))  # its features
  evaluator.random_init_metrics(train, test, config, variables(1.0), encoder(2.0))
  assert len(computed) == 2  # another encoder's features
  evaluator.random_init_metrics(train, test, config, variables(2.0), encoder(2.0))
  assert len(computed) == 3  # other variables (the same features: a degenerate encoder)
  evaluator.random_init_metrics(train[:200], test, config, variables(2.0), encoder(2.0))
  assert len(computed) == 4  # other data
  monkeypatch.setattr(evaluator, "evaluation_code_version", lambda: "changed")
  evaluator.random_init_metrics(train[:200], test, config, variables(2.0), encoder(2.0))
  assert len(computed) == 5  # other evaluation code
