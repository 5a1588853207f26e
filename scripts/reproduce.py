"""Runs the reference and the default MNIST configs and writes docs/results.md.

  python scripts/reproduce.py [--data_dir TFDS_DIR] [--workdir runs/reproduce]
         [--configs mnist_seed,mnist] [--ablation]

Each config is trained from scratch with `python -m cl_jax.train` (evaluation
included) in WORKDIR/<config>; the table takes every number from the runs'
results.json and the raw-pixel baseline from the same evaluation. With
--ablation, each listed variant of the default config (one change undone) is
run too. Same config and seed on the same machine give the same numbers: the
table shows each run's params_sha256 so a re-run can be compared byte for byte.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Quoted from the issue that set the target (measured on this project's machines
# with the PyTorch example and a JAX sketch; not re-run by this script).
QUOTED_ROWS = [
    ("the replaced PyTorch example as written (loss defect included), 10 epochs, batch 128",
     "97.70%", "-"),
    ("the same example with only its loss target fixed", "94.80%", "-"),
]

# Variants of configs/mnist.py, each undoing one change towards the reference.
ABLATIONS = {
    "no_elastic_no_shear": ["--config.augment.elastic_alpha=0", "--config.augment.shear_degrees=0"],
    "10_epochs_constant_lr": ["--config.num_epochs=10", "--config.lr_schedule=constant",
                              "--config.warmup_epochs=0"],
}


def train(config_name, workdir, data_dir, extra=()):
  command = [sys.executable, "-m", "cl_jax.train", "--config", f"configs/{config_name}.py",
             "--workdir", workdir, "--config.progress_bar=False", *extra]
  if data_dir:
    command.append(f"--config.data_dir={data_dir}")
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.time()
  subprocess.run(command, cwd=REPO_ROOT, check=True)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  results["wall_seconds"] = time.time() - start
  results["command"] = " ".join(["python -m cl_jax.train"] + command[3:])
  return results


def percent(x):
  return f"{100 * x:.2f}%"


def machine():
  import jax  # pylint: disable=g-import-not-at-top
  cpu = " ".join(filter(None, (platform.machine(), platform.processor())))
  return (f"{cpu}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, jax {jax.__version__}, devices: "
          f"{', '.join(sorted({d.device_kind for d in jax.devices()}))} x{jax.device_count()}")


def write_report(path, runs, raw):
  lines = [
      "# Representation quality on MNIST",
      "",
      f"Written by `scripts/reproduce.py` on {datetime.date.today().isoformat()} "
      "(`python scripts/reproduce.py [--data_dir TFDS_DIR]`); each config trained from "
      "scratch, then evaluated.",
      f"Machine: {machine()}.",
      "",
      "k = 5 throughout. `seed`: k-NN fit on the first 8,000 test images, predicting the last",
      "2,000 (the replaced example's protocol; \"first\" in the canonical order of",
      "`cl_jax/data`, the same however the data were prepared); `train_test`: fit on the",
      "60,000 training images, predict the 10,000 test images. Features are the encoder output.",
      "",
      "| what | k-NN seed | k-NN seed (cosine) | k-NN train_test | k-NN train_test (cosine) | "
      "linear probe | train time | wall time (train + eval) |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |",
      f"| raw pixels (same evaluation; cached once per dataset) | {percent(raw['knn_seed'])} | {percent(raw['knn_seed_cosine'])} "
      f"| {percent(raw['knn_train_test'])} | {percent(raw['knn_train_test_cosine'])} | "
      f"{percent(raw['linear_probe'])} | - | - |",
  ]
  for name, seed, train_test in QUOTED_ROWS:
    lines.append(f"| {name} (quoted, not re-run) | {seed} | - | {train_test} | - | - | - | - |")
  for name, r in runs.items():
    lines.append(
        f"| `{name}` | {percent(r['knn_seed'])} | {percent(r['knn_seed_cosine'])} | "
        f"{percent(r['knn_train_test'])} | {percent(r['knn_train_test_cosine'])} | "
        f"{percent(r['linear_probe'])} | {r['train_seconds'] / 60:.1f} min | "
        f"{r['wall_seconds'] / 60:.1f} min |")
  write_lines(path, lines + run_details(runs))


def run_details(runs):
  """A report's closing section: each run's command, length, speed, loss and parameter hash."""
  lines = ["", "## Commands and run details", ""]
  for name, r in runs.items():
    lines += [f"- `{name}`: `{r['command']}`",
              f"  - {r['steps']} steps ({r['epochs']:.0f} epochs) on {r['num_devices']} device(s), "
              f"{r['images_per_second']:.0f} images/s, final loss {r['final_loss']:.4f}",
              f"  - params_sha256 `{r['params_sha256']}`"]
  return lines


def write_lines(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="", help="TFDS data dir holding mnist")
  parser.add_argument("--workdir", default=os.path.join(REPO_ROOT, "runs", "reproduce"))
  parser.add_argument("--configs", default="mnist_seed,mnist")
  parser.add_argument("--ablation", action="store_true")
  parser.add_argument("--out", default=os.path.join(REPO_ROOT, "docs", "results.md"))
  args = parser.parse_args()

  runs = {}
  for name in args.configs.split(","):
    runs[name] = train(name, os.path.join(args.workdir, name), args.data_dir)
  if args.ablation:
    for name, overrides in ABLATIONS.items():
      runs[f"mnist, {name}"] = train("mnist", os.path.join(args.workdir, name), args.data_dir,
                                     overrides)
  raw = next(iter(runs.values()))["raw_pixels"]
  write_report(args.out, runs, raw)
  print(open(args.out, encoding="utf-8").read())


if __name__ == "__main__":
  main()
