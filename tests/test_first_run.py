"""The first run as a new user has it: the README's command from another directory, with an
absolute config path, no --workdir, and (offline) no data yet."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mnist.py")


def train(cwd, args, **env):
  return subprocess.run([sys.executable, "-m", "cl_jax.train", "--config", CONFIG, *args],
                        cwd=cwd, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, **env))


def test_offline_first_run_fails_fast_naming_the_import(tmp_path, closed_local_port):
  """No data and no network (a closed local port stands in for the download host): exit 2
  within seconds of start-up, the default workdir printed, the import command named."""
  start = time.monotonic()
  proc = train(str(tmp_path), ["--config.progress_bar=False"],
               TFDS_DATA_DIR=str(tmp_path / "tfds"), HOME=str(tmp_path / "home"),
               CL_JAX_DOWNLOAD_PROBE=f"127.0.0.1:{closed_local_port}")
  elapsed = time.monotonic() - start
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f"workdir: {tmp_path / 'runs' / 'mnist'}" in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "cannot be downloaded" in errors[0], proc.stderr[-3000:]
  assert "python -m cl_jax.data.import_idx --src" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert elapsed < 120, elapsed  # start-up (TF, JAX imports) plus a probe of ~0 s here


@pytest.mark.long  # ~1.5 min: a subprocess run with evaluation
def test_first_run_from_another_directory_trains_and_evaluates(mnist_data_dir, tmp_path):
  """configs/mnist.py (which builds on mnist_seed.py) loads by absolute path from elsewhere;
  the run lands in ./runs/mnist and evaluates with the defaults."""
  proc = train(str(tmp_path), ["--config.progress_bar=False", f"--config.data_dir={mnist_data_dir}",
                               "--config.num_epochs=1", "--config.max_train_examples=1280",
                               "--config.eval_train_examples=2000"],
               CL_JAX_CACHE=str(tmp_path / "cache"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  workdir = tmp_path / "runs" / "mnist"
  with open(workdir / "results.json", encoding="utf-8") as f:
    results = json.load(f)
  assert results["steps"] == 10 and 0.5 < results["knn_train_test"] <= 1
  assert (workdir / "report.md").exists() and (workdir / "tsne.png").exists()
