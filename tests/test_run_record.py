"""The training record of a workdir: a finished run's re-run leaves it alone, train time
adds up over resumes, config.json describes only a restore that happened, strict JSON,
the devices a run may use, and the validation split the monitor reads."""

import json
import os

import jax
import numpy as np
import pytest

from cl_jax import checkpointing
from cl_jax import config_validation
from cl_jax import data
from cl_jax import evaluation
from cl_jax import evaluator
from cl_jax import metric_logging
from cl_jax import parallel
from cl_jax import trainer
from tests.test_trainer import quick_config

# 512 images, batch 64: 8 steps an epoch.
TINY = dict(max_train_examples=512, batch_size=64, num_epochs=2, log_every_steps=4,
            checkpoint_every_steps=4, num_devices=2)


def run(data_dir, workdir, **overrides):
  return trainer.train_and_evaluate(quick_config(data_dir, **{**TINY, **overrides}), workdir)


def strict_load(path):
  """json.load that refuses NaN and Infinity (which Python's json writes by default)."""
  def refuse(constant):
    raise ValueError(f"{path}: {constant} is not JSON")
  with open(path, encoding="utf-8") as f:
    return json.loads(f.read(), parse_constant=refuse)


def read_bytes(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.mark.slow
def test_rerun_of_a_finished_run_keeps_its_record(mnist_data_dir, tmp_path):
  """The same command again on a finished workdir trains nothing and rewrites nothing
  (before: results.json with final_loss and images_per_second NaN, train_seconds 0.0004
  and a negative first_call_seconds)."""
  workdir = str(tmp_path / "run")
  first = run(mnist_data_dir, workdir, max_steps=12)
  files = {name: read_bytes(os.path.join(workdir, name))
           for name in ("results.json", "metrics.jsonl", "config.json")}
  again = run(mnist_data_dir, workdir, max_steps=12)
  assert again == first
  for name, content in files.items():
    assert read_bytes(os.path.join(workdir, name)) == content, name
  results = strict_load(os.path.join(workdir, "results.json"))
  assert results["steps"] == 12 and np.isfinite(results["final_loss"])
  assert results["first_call_seconds"] > 0 and results["train_seconds"] > 0
  # Nor does a re-run with other settings that train nothing: an earlier stop, or a forced
  # resume with another temperature (config.json and config_changes.jsonl too).
  run(mnist_data_dir, workdir, max_steps=8)
  run(mnist_data_dir, workdir, max_steps=12, temperature=0.25, resume="force")
  for name, content in files.items():
    assert read_bytes(os.path.join(workdir, name)) == content, name
  assert not os.path.exists(os.path.join(workdir, "config_changes.jsonl"))


@pytest.mark.slow
def test_finished_run_writes_only_what_is_missing(mnist_data_dir, tmp_path, monkeypatch):
  """A run stopped between its last checkpoint and its record gets a record of that
  checkpoint (steps, params_sha256, the checkpoint's train_seconds); the evaluation runs
  only where results.json has none of this step, or none of the validation split."""
  workdir = str(tmp_path / "run")
  first = run(mnist_data_dir, workdir, max_steps=8)
  evaluations = []
  monkeypatch.setattr(evaluator, "evaluate_run", lambda config, workdir, progress: (
      evaluations.append(workdir) or evaluator.read_json(os.path.join(workdir, "results.json"))))
  path = os.path.join(workdir, "results.json")
  evaluator.write_json(path, {"steps": 4, "params_sha256": "another checkpoint's"})
  rebuilt = run(mnist_data_dir, workdir, max_steps=8, evaluate_at_end=True)
  assert rebuilt["steps"] == 8 and rebuilt["params_sha256"] == first["params_sha256"]
  assert 0 < rebuilt["train_seconds"] <= first["train_seconds"]  # the checkpoint's count
  assert len(evaluations) == 1  # no evaluation of step 8 in the record
  evaluator.write_json(path, {**rebuilt, "eval_step": 8, "validation_knn": 0.9})
  run(mnist_data_dir, workdir, max_steps=8, evaluate_at_end=True)
  assert len(evaluations) == 1  # evaluated already: nothing to do
  evaluator.write_json(path, {**rebuilt, "eval_step": 8})
  run(mnist_data_dir, workdir, max_steps=8, evaluate_at_end=True)
  assert len(evaluations) == 2  # evaluated before the validation split existed


@pytest.mark.slow
def test_train_seconds_add_up_over_resumes(mnist_data_dir, tmp_path):
  """A resumed run's train_seconds counts every segment: at least the first segment's time
  plus the second's first call (before: only the last segment)."""
  workdir = str(tmp_path / "run")
  first = run(mnist_data_dir, workdir, max_steps=8)
  second = run(mnist_data_dir, workdir)
  assert second["resumed_from_step"] == 8 and second["steps"] == 16
  assert second["train_seconds"] >= first["train_seconds"] + second["first_call_seconds"]


@pytest.mark.slow
def test_config_json_is_written_only_after_a_successful_restore(mnist_data_dir, tmp_path):
  """Under resume=force a restore that fails (another model width) leaves config.json
  describing the run that trained; one that succeeds writes the new config and records
  what changed in config_changes.jsonl."""
  workdir = str(tmp_path / "run")
  run(mnist_data_dir, workdir, max_steps=4)
  saved = read_bytes(os.path.join(workdir, "config.json"))
  wider = quick_config(mnist_data_dir, **{**TINY, "resume": "force"})
  wider.model.dense_features = 64
  with pytest.raises(checkpointing.CheckpointError):
    trainer.train_and_evaluate(wider, workdir)
  assert read_bytes(os.path.join(workdir, "config.json")) == saved
  assert not os.path.exists(os.path.join(workdir, "config_changes.jsonl"))

  forced = run(mnist_data_dir, workdir, max_steps=8, temperature=0.25, resume="force")
  assert forced["resumed_from_step"] == 4
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["temperature"] == 0.25
  with open(os.path.join(workdir, "config_changes.jsonl"), encoding="utf-8") as f:
    changes = [json.loads(line) for line in f]
  # resume itself is not a difference (checkpointing.RESUMABLE_CHANGES).
  assert changes == [{"step": 4, "changes": {"temperature": {"saved": 0.5, "now": 0.25}}}]


def test_json_records_are_strict(tmp_path):
  """NaN and infinities become null in results.json and metrics.jsonl (JSON has no NaN)."""
  path = str(tmp_path / "results.json")
  evaluator.write_json(path, {"loss": float("nan"), "rate": float("inf"), "ok": 1.5,
                              "nested": {"values": [float("-inf"), 2.0]}})
  assert strict_load(path) == {"loss": None, "rate": None, "ok": 1.5,
                               "nested": {"values": [None, 2.0]}}
  writer = metric_logging.MetricWriter(str(tmp_path))
  writer.write(3, {"loss": float("nan"), "grad_norm": 1.0})
  writer.close()
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    line = f.readline()
  assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == {
      "step": 3, "loss": None, "grad_norm": 1.0}


def test_concurrent_json_writers_do_not_collide(tmp_path):
  """Two evaluations finishing at once (threads here) each rename their own temporary file
  (before: both wrote path + ".tmp" and one os.replace failed)."""
  import threading  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "cache.json")
  errors = []

  def write_many(worker):
    try:
      for i in range(200):
        evaluator.write_json(path, {"worker": worker, "i": i})
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  threads = [threading.Thread(target=write_many, args=(w,)) for w in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors[:1]
  assert strict_load(path)["i"] == 199
  assert os.listdir(tmp_path) == ["cache.json"]  # no temporary file left behind


def test_more_devices_than_exist_are_refused():
  config = quick_config("", num_devices=jax.local_device_count() + 1)
  with pytest.raises(config_validation.ConfigError,
                     match=f"num_devices={jax.local_device_count() + 1}: only "
                     f"{jax.local_device_count()} local cpu device"):
    parallel.select_devices(config)
  assert len(parallel.select_devices(quick_config("", num_devices=3))) == 3


@pytest.mark.slow
def test_evaluation_uses_the_runs_devices(mnist_data_dir, tmp_path, monkeypatch):
  """num_devices=2: every forward pass of the evaluation on those 2 devices (before: on
  every local device)."""
  workdir = str(tmp_path / "run")
  run(mnist_data_dir, workdir, max_steps=4)
  used = []
  embed = evaluation.embed

  def recording_embed(*args, devices=None, **kwargs):
    used.append(tuple(devices or jax.local_devices()))
    return embed(*args, devices=devices, **kwargs)
  monkeypatch.setattr(evaluation, "embed", recording_embed)
  config = quick_config(mnist_data_dir, **TINY, eval_train_examples=1000, tsne_points=50,
                        cache_dir=str(tmp_path / "cache"))
  evaluator.evaluate_run(config, workdir, progress=False)
  assert used and set(used) == {tuple(jax.local_devices()[:2])}


@pytest.mark.slow
def test_monitor_reads_the_validation_split_never_test(mnist_data_dir, tmp_path, monkeypatch):
  """The online monitor (the signal runs are chosen on) queries the first validation_examples
  training images and votes with training images after them (before: test queries)."""
  seen = {}

  class RecordingMonitor(trainer.KnnMonitor):
    def __init__(self, model, bank, queries, config, devices):
      seen.update(bank=bank, queries=queries)
      super().__init__(model, bank, queries, config, devices)
  monkeypatch.setattr(trainer, "KnnMonitor", RecordingMonitor)
  run(mnist_data_dir, str(tmp_path / "run"), num_epochs=1, eval_every_epochs=1,
      validation_examples=3000, monitor_bank_size=1000, monitor_query_size=500)
  train = data.load_split("mnist", "train", mnist_data_dir)
  test = data.load_split("mnist", "test", mnist_data_dir)
  queries = seen["queries"][:500]
  np.testing.assert_array_equal(queries.images, train.images[:500])
  np.testing.assert_array_equal(seen["bank"][:1000].images, train.images[3000:4000])
  test_digests = {image.tobytes() for image in test.images}
  assert not any(image.tobytes() in test_digests for image in queries.images)


def test_supcon_pretrains_without_the_validation_labels(mnist_data_dir):
  """A method that reads labels never sees the validation split's; label-free ones
  pre-train on every training image."""
  supcon = quick_config(mnist_data_dir, method="supcon", validation_examples=1000,
                        temperature=0.1)
  simclr = quick_config(mnist_data_dir, validation_examples=1000)
  full = data.load_split("mnist", "train", mnist_data_dir)
  train, validation, rest = trainer.load_training_data(supcon, mnist_data_dir)
  np.testing.assert_array_equal(train.images, full.images[1000:])
  np.testing.assert_array_equal(validation.images, full.images[:1000])
  assert len(rest) == len(full) - 1000
  train, _, _ = trainer.load_training_data(simclr, mnist_data_dir)
  np.testing.assert_array_equal(train.images, full.images)
  # ... without the validation split's labels, which the online probe would learn.
  np.testing.assert_array_equal(train.labels[:1000], -1)
  np.testing.assert_array_equal(train.labels[1000:], full.labels[1000:])
