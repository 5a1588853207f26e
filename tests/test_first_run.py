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
  # The default keeps its compiled programs: one machine's folder under the cache dir.
  machines = list((tmp_path / "cache" / f"xla-{os.getuid()}").iterdir())
  assert len(machines) == 1 and any(machines[0].iterdir())


def test_readme_override_example_has_a_workdir_of_its_own():
  """The README's override example used to write into runs/mnist, after which the README's
  plain command was refused (another config in that workdir)."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  example = readme.split("Override any config field on the command line")[1].split("```")[1]
  assert "--config.max_steps" in example and "--config.num_epochs" in example
  workdir = example.split("--workdir")[1].split()[0]
  assert workdir != os.path.join("runs", "mnist"), workdir


@pytest.mark.slow  # ~1 min: a subprocess run with evaluation
def test_console_is_quiet_and_ends_with_a_summary(mnist_data_dir, tmp_path):
  """A short run prints its workdir, no INFO lines of the libraries (there were 94 in a
  300-step run) and ends with the headline metrics against raw pixels and the paths."""
  workdir = tmp_path / "run"
  proc = train(str(tmp_path), ["--workdir", str(workdir), "--config.progress_bar=False",
                               f"--config.data_dir={mnist_data_dir}", "--config.max_steps=4",
                               "--config.eval_train_examples=2000",
                               "--config.tsne_points=100", "--config.eval_every_epochs=0"],
               CL_JAX_CACHE=str(tmp_path / "cache"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (proc.stderr + proc.stdout).splitlines()
  assert len(lines) <= 12, "\n".join(lines)
  assert not [line for line in lines if line[:1] == "I" and line[1:5].isdigit()], lines
  summary = proc.stdout
  assert "validation k-NN:" in summary and "test k-NN train -> test:" in summary
  assert summary.count("(raw pixels") == 3 == summary.count("its random initialisation")
  assert f"report: {workdir / 'report.md'}" in summary and "checkpoints:" in summary
