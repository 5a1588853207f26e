"""scripts/reproduce.py and scripts/compare_methods.py over several seeds, with training replaced
by made-up results.json files (nothing is trained): aggregation, tables, workdirs, reuse."""

import ast
import json
import os
import sys

import numpy as np
import pytest

from cl_jax import config_files
from configs import mnist, mnist_byol, mnist_seed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO_ROOT, "scripts")
# reproduce.py's columns, in order: validation first, then test.
METRICS = ("validation_knn", "validation_knn_cosine", "validation_weighted_knn200",
           "validation_linear_probe", "validation_online_linear_probe", "knn_seed",
           "knn_seed_cosine", "knn_train_test", "knn_train_test_cosine", "weighted_knn200",
           "linear_probe", "online_linear_probe")
ONLINE = ("validation_online_linear_probe", "online_linear_probe")  # none for the baselines
LAST = 1 + len(METRICS)  # a row's cells after its name: the metrics, then the times


def trained_config_json(command):
  """The config.json the trainer writes for a train command line: the config file's
  get_config() with each --config.KEY=VALUE set (a Python literal, else a string)."""
  config = config_files.load(os.path.join(REPO_ROOT, command[command.index("--config") + 1]))
  config = config.get_config()
  for arg in command:
    if arg.startswith("--config."):
      key, value = arg[len("--config."):].split("=", 1)
      *parents, leaf = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass  # a path
      node[leaf] = value
  return config.to_json()


def made_up_results(workdir, seed):
  """A results.json's numbers, different for every workdir and seed."""
  rng = np.random.default_rng([seed, len(workdir)])
  results = {key: float(rng.uniform(0.9, 0.99)) for key in METRICS}
  results.update(train_seconds=float(rng.uniform(500, 700)),
                 images_per_second=float(rng.uniform(600, 800)), steps=100, epochs=5.0,
                 num_devices=1, final_loss=float(rng.uniform(3, 4)), params_sha256="ab" * 32,
                 raw_pixels={key: 0.95 for key in METRICS if key not in ONLINE},
                 random_init={key: float(rng.uniform(0.8, 0.9)) for key in METRICS
                              if key not in ONLINE})
  return results


@pytest.fixture
def scripts(monkeypatch):
  """(reproduce, compare_methods) with a fake `python -m cl_jax.train`; the commands it was
  given collect in reproduce.commands."""
  monkeypatch.syspath_prepend(SCRIPTS)
  import compare_methods  # pylint: disable=g-import-not-at-top
  import reproduce  # pylint: disable=g-import-not-at-top
  commands = []

  def fake_run(command, **_):
    commands.append(command)
    workdir = command[command.index("--workdir") + 1]
    seeds = [int(c.split("=")[1]) for c in command if c.startswith("--config.seed=")]
    os.makedirs(workdir)
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
      json.dump(made_up_results(workdir, seeds[-1]), f)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(trained_config_json(command))
  monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
  for module in (reproduce, compare_methods):
    monkeypatch.setattr(module, "machine", lambda: "test machine")
  monkeypatch.setattr(reproduce, "commands", commands, raising=False)
  return reproduce, compare_methods


def cell(values, scale=100, unit="%", digits=2):
  """The expected "mean ± std" cell, from NumPy (sample standard deviation, ddof=1)."""
  return (f"{scale * np.mean(values):.{digits}f} ± "
          f"{scale * np.std(values, ddof=1):.{digits}f}{unit}")


def row_of(report, start):
  (row,) = [line for line in report.splitlines() if line.startswith(start)]
  return [c.strip() for c in row.strip("|").split("|")]


def test_aggregate_matches_numpy(scripts):
  reproduce, _ = scripts
  runs = [{"a": 0.91, "b": 3, "c": 1.5, "text": "x", "raw": {"a": 1.0}, "flag": True},
          {"a": 0.95, "b": 4, "c": 2.5, "text": "y", "raw": {"a": 1.0}, "flag": False},
          {"a": 0.96, "b": 8, "text": "z", "raw": {"a": 1.0}, "flag": True}]
  stats = reproduce.aggregate(runs)
  assert sorted(stats) == ["a", "b"]  # numbers every run has; not strings, dicts or flags
  for key in ("a", "b"):
    values = [r[key] for r in runs]
    mean, std = stats[key]
    assert mean == pytest.approx(np.mean(values), rel=1e-12)  # float64 both ways
    assert std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
  assert reproduce.aggregate(runs[:1]) == {"a": (0.91, None), "b": (3, None), "c": (1.5, None)}


def test_mean_std_cells(scripts):
  reproduce, _ = scripts
  values = [0.9866, 0.9871, 0.9876]  # mean 0.9871, sample std 0.0005
  stats = reproduce.aggregate([{"k": v} for v in values])
  assert reproduce.mean_std(stats, "k") == "98.71 ± 0.05%" == cell(values)
  assert reproduce.mean_std(reproduce.aggregate([{"k": 0.9871}]), "k") == "98.71%"
  seconds = [600.0, 660.0]  # 10.5 min ± 42.4 s
  assert reproduce.minutes(reproduce.aggregate([{"t": s} for s in seconds]), "t") == (
      "10.5 ± 0.7 min")


def test_reproduce_trains_each_seed_and_tables_mean_and_std(scripts, tmp_path, monkeypatch):
  reproduce, _ = scripts
  out, workdir = tmp_path / "results.md", tmp_path / "runs"
  monkeypatch.setattr(sys, "argv", ["reproduce.py", "--configs", "mnist_seed,mnist", "--seeds",
                                    "3", "--workdir", str(workdir), "--out", str(out)])
  reproduce.main()
  report = out.read_text(encoding="utf-8")
  assert "N = 3 seeds per row" in report
  assert "smaller than two standard deviations" in report and "is called a tie" in report
  for name, config in (("mnist_seed", mnist_seed), ("mnist", mnist)):
    first = config.get_config().seed
    seeds = [first, first + 1, first + 2]
    dirs = [str(workdir / name / f"seed{s}") for s in seeds]
    commands = [c for c in reproduce.commands if f"configs/{name}.py" in c]
    assert [c[c.index("--workdir") + 1] for c in commands] == dirs
    assert [[a for a in c if a.startswith("--config.seed=")] for c in commands] == [
        [f"--config.seed={s}"] for s in seeds]
    runs = [made_up_results(d, s) for d, s in zip(dirs, seeds)]
    row = row_of(report, f"| `{name}` |")
    assert row[1:LAST] == [cell([r[key] for r in runs]) for key in METRICS]
    assert row[LAST] == cell([r["train_seconds"] for r in runs], 1 / 60, " min", 1)
    # What training bought: the row below is each seed's own random initialisation.
    initial = row_of(report, f"| `{name}` at its random initialisation |")
    assert initial[1:LAST] == [
        "-" if key in ONLINE else cell([r["random_init"][key] for r in runs]) for key in METRICS]
    assert initial[LAST:] == ["-", "-"]
    for s in seeds:
      assert f"- `{name}`, seed {s}: `python -m cl_jax.train --config configs/{name}.py" in report
  assert row_of(report, "| raw pixels")[1:LAST] == [
      "-" if key in ONLINE else "95.00%" for key in METRICS]


def test_reproduce_ablations_by_name(scripts, tmp_path, monkeypatch):
  """--ablations runs the named variants of the default (each a row of its own) and refuses
  an unknown name."""
  reproduce, _ = scripts
  out, workdir = tmp_path / "results.md", tmp_path / "runs"
  argv = ["reproduce.py", "--configs", "mnist", "--workdir", str(workdir), "--out", str(out)]
  monkeypatch.setattr(sys, "argv", argv + ["--ablations", "temperature_0.5,no_elastic_no_shear"])
  reproduce.main()
  assert [c[c.index("--workdir") + 1] for c in reproduce.commands] == [
      str(workdir / name / "seed0") for name in ("mnist", "temperature_0.5", "no_elastic_no_shear")]
  assert "--config.temperature=0.5" in reproduce.commands[1]
  assert "--config.augment.elastic_alpha=0" in reproduce.commands[2]
  report = out.read_text(encoding="utf-8")
  assert row_of(report, "| `mnist, temperature_0.5` |") and row_of(report, "| `mnist` |")
  monkeypatch.setattr(sys, "argv", argv + ["--ablations", "bigger_batch"])
  with pytest.raises(SystemExit):
    reproduce.main()


def test_reproduce_with_one_seed_shows_single_values(scripts, tmp_path, monkeypatch):
  reproduce, _ = scripts
  out, workdir = tmp_path / "results.md", tmp_path / "runs"
  monkeypatch.setattr(sys, "argv", ["reproduce.py", "--configs", "mnist_seed", "--workdir",
                                    str(workdir), "--out", str(out)])
  reproduce.main()
  report = out.read_text(encoding="utf-8")
  seed = mnist_seed.get_config().seed
  results = made_up_results(str(workdir / "mnist_seed" / f"seed{seed}"), seed)
  assert row_of(report, "| `mnist_seed` |")[1:LAST] == [
      f"{100 * results[k]:.2f}%" for k in METRICS]
  assert "N = 1: one seed per row" in report and "±" not in report


def test_compare_methods_over_seeds_and_reuse(scripts, tmp_path, monkeypatch):
  reproduce, compare_methods = scripts
  out, workdir = tmp_path / "methods.md", tmp_path / "runs"
  argv = ["compare_methods.py", "--methods", "byol,simclr", "--seeds", "2", "--num_epochs",
          "3", "--workdir", str(workdir), "--out", str(out)]
  monkeypatch.setattr(sys, "argv", argv)
  compare_methods.main()
  assert len(reproduce.commands) == 4
  assert all("--config.num_epochs=3" in c for c in reproduce.commands)
  first = out.read_text(encoding="utf-8")
  assert "N = 2 seeds per row" in first and "--seeds 2" in first
  columns = ("validation_knn", "validation_weighted_knn200", "validation_linear_probe",
             "validation_online_linear_probe", "knn_train_test", "knn_train_test_cosine",
             "weighted_knn200", "linear_probe", "online_linear_probe", "knn_seed")
  for method, config in (("simclr", mnist), ("byol", mnist_byol)):
    seeds = [config.get_config().seed + i for i in range(2)]
    runs = [made_up_results(str(workdir / method / f"seed{s}"), s) for s in seeds]
    row = row_of(first, f"| {method} |")
    assert row[2:12] == [cell([r[key] for r in runs]) for key in columns]
    assert row[13] == cell([r["images_per_second"] for r in runs], 1, "", 0)
    initial = row_of(first, f"| {method} at its random initialisation |")
    assert initial[1:12] == ["-"] + [
        "-" if key in ONLINE else cell([r["random_init"][key] for r in runs]) for key in columns]

  # Every run is reused: nothing trains, the same rows come back, each run listed.
  monkeypatch.setattr(sys, "argv", argv + ["--reuse"])
  compare_methods.main()
  assert len(reproduce.commands) == 4
  again = out.read_text(encoding="utf-8")
  for method in ("simclr", "byol"):
    assert row_of(again, f"| {method} |")[:7] == row_of(first, f"| {method} |")[:7]
  listed = [f"{method}, seed {config.get_config().seed + i}"
            for method, config in (("byol", mnist_byol), ("simclr", mnist)) for i in range(2)]
  assert f"(`--reuse`): {'; '.join(listed)};" in again


def test_reproduce_resumes_with_reuse(scripts, tmp_path, monkeypatch):
  """An interrupted reproduction (one seed's run missing) trains only that seed again."""
  reproduce, _ = scripts
  out, workdir = tmp_path / "results.md", tmp_path / "runs"
  argv = ["reproduce.py", "--configs", "mnist_seed", "--seeds", "2", "--workdir", str(workdir),
          "--out", str(out)]
  monkeypatch.setattr(sys, "argv", argv)
  reproduce.main()
  first = out.read_text(encoding="utf-8")
  seeds = [mnist_seed.get_config().seed + i for i in range(2)]
  os.remove(workdir / "mnist_seed" / f"seed{seeds[1]}" / "reproduce_run.json")

  monkeypatch.setattr(sys, "argv", argv + ["--reuse"])
  reproduce.main()
  assert len(reproduce.commands) == 3  # two, then only the missing seed
  assert f"--config.seed={seeds[1]}" in reproduce.commands[-1]
  again = out.read_text(encoding="utf-8")
  assert row_of(again, "| `mnist_seed` |")[:6] == row_of(first, "| `mnist_seed` |")[:6]
  assert f"(`--reuse`): mnist_seed, seed {seeds[0]};" in again
  assert "--reuse" not in first

  # A run whose config.json is not the config its command gives now (its config file was
  # edited since; here the temperature) is not the same run: trained again.
  run_config = workdir / "mnist_seed" / f"seed{seeds[0]}" / "config.json"
  edited = json.loads(run_config.read_text(encoding="utf-8"))
  edited["temperature"] = 2 * edited["temperature"]
  run_config.write_text(json.dumps(edited), encoding="utf-8")
  reproduce.main()
  assert len(reproduce.commands) == 4
  assert f"--config.seed={seeds[0]}" in reproduce.commands[-1]
  assert f"(`--reuse`): mnist_seed, seed {seeds[1]};" in out.read_text(encoding="utf-8")

  # A field the library's config gained since the run (dropped from its config.json here)
  # counts as its default: reused; a saved value other than the default is not.
  run_config = workdir / "mnist_seed" / f"seed{seeds[1]}" / "config.json"
  saved = json.loads(run_config.read_text(encoding="utf-8"))
  del saved["data_placement"], saved["augment"]["blur_sigma"]
  run_config.write_text(json.dumps(saved), encoding="utf-8")
  reproduce.main()
  assert len(reproduce.commands) == 4
  saved["augment"]["flip_probability"] = 1 - mnist_seed.get_config().augment.flip_probability
  run_config.write_text(json.dumps(saved), encoding="utf-8")
  reproduce.main()
  assert len(reproduce.commands) == 5
  assert f"--config.seed={seeds[1]}" in reproduce.commands[-1]

  # Another command (here another data dir) is not the same run: trained again.
  monkeypatch.setattr(sys, "argv", argv + ["--reuse", "--data_dir", str(tmp_path / "tfds")])
  reproduce.main()
  assert len(reproduce.commands) == 7
  assert "--reuse" not in out.read_text(encoding="utf-8")


def test_relative_paths_reach_the_trainer_absolute(scripts, tmp_path, monkeypatch):
  """The runs train with the repository as their directory: a --workdir or --data_dir
  relative to where the script was started must reach them made absolute."""
  reproduce, _ = scripts
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "argv", ["reproduce.py", "--configs", "mnist_seed", "--workdir", "runs",
                                    "--data_dir", "tfds", "--out", "results.md"])
  reproduce.main()
  (command,) = reproduce.commands
  seed = mnist_seed.get_config().seed
  workdir = tmp_path / "runs" / "mnist_seed" / f"seed{seed}"
  assert command[command.index("--workdir") + 1] == str(workdir)
  assert f"--config.data_dir={tmp_path / 'tfds'}" in command
  # A URL is not a local path: passed on as it is.
  monkeypatch.setattr(sys, "argv", ["reproduce.py", "--configs", "mnist_seed", "--workdir", "other",
                                    "--data_dir", "gs://bucket/tfds", "--out", "results.md"])
  reproduce.main()
  assert "--config.data_dir=gs://bucket/tfds" in reproduce.commands[-1]


def test_command_config_is_what_the_trainer_runs(scripts):
  """The config `--reuse` compares with a run's config.json: the config file with the
  command's overrides, each field set here by hand."""
  reproduce, _ = scripts
  command = reproduce.train_command("mnist", "/w", "/data", 3, [
      "--config.augment.crop_scale=(0.4, 1.0)", "--config.num_epochs=2",
      "--config.learning_rate=2e-3"])
  expected = mnist.get_config()
  expected.progress_bar, expected.seed, expected.data_dir = False, 3, "/data"
  expected.augment.crop_scale, expected.num_epochs, expected.learning_rate = (0.4, 1.0), 2, 2e-3
  assert (json.loads(reproduce.command_config(command).to_json())
          == json.loads(expected.to_json()))
