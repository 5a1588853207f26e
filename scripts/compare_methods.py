"""Trains every method on the same budget and writes the comparison table docs/methods.md.

  python scripts/compare_methods.py [--data_dir TFDS_DIR] [--num_epochs 5]
         [--methods simclr,moco,byol,supcon,triplet,margin] [--workdir runs/methods] [--reuse]
         [--seeds N]

Each method runs its config (configs/mnist.py for simclr, configs/mnist_<method>.py
for the others: the same data, views, encoder, optimizer and schedule) from
scratch with `python -m cl_jax.train`, for the same number of epochs, one after
the other, N times (the config's seed S, then S + 1, ..., in WORKDIR/<method>/seed<S>),
then is evaluated the same way; every number comes from the runs' results.json,
each cell the mean ± sample standard deviation over the seeds.
"""

import argparse
import datetime
import os

from cl_jax import config_files

# scripts/ is on sys.path when this runs as a script.
from reproduce import (REPO_ROOT, absolute_path, aggregate, config_seeds, machine, mean_std,
                       minutes, random_init_row, run_details, seeds_note, train_or_reuse,
                       write_lines)

CONFIGS = config_files.load(os.path.join(REPO_ROOT, "configs", "__init__.py")).METHOD_CONFIGS
NOTES = {"supcon": "uses the labels: a supervised reference"}


# The metrics of the table (results.json keys), in its column order: validation first
# (methods are compared and tuned on it), then test (reported once).
METRICS = {"validation_knn": "validation k-NN",
           "validation_weighted_knn200": "validation weighted k-NN (k = 200)",
           "validation_linear_probe": "validation linear probe",
           "validation_online_linear_probe": "validation online probe",
           "knn_train_test": "test k-NN train_test",
           "knn_train_test_cosine": "test k-NN train_test (cosine)",
           "weighted_knn200": "test weighted k-NN (k = 200)", "linear_probe": "test linear probe",
           "online_linear_probe": "test online probe", "knn_seed": "test k-NN seed"}


def write_report(path, runs, raw, num_epochs, data_dir, num_seeds, reused=()):
  """runs: {method: [results dict of each seed]}; reused: "method, seed S" of the runs taken
  from an earlier invocation."""
  command = f"python scripts/compare_methods.py --num_epochs {num_epochs} --seeds {num_seeds}"
  if data_dir:
    command += " --data_dir TFDS_DIR"
  lines = [
      "# Methods compared on MNIST",
      "",
      f"Written by `scripts/compare_methods.py` on {datetime.date.today().isoformat()} "
      f"(`{command}`): every method trained from scratch for {num_epochs} epochs with its "
      "config's other settings (the default config's views, encoder, Adam 1e-3 with warm-up "
      "and cosine decay, batch 128), one run after the other, then evaluated the same way.",
      f"Machine: {machine()}.",
  ]
  if reused:
    lines.append(f"Runs taken from earlier runs of this script with the same budget (`--reuse`): "
                 f"{'; '.join(reused)}; the others trained in this run.")
  lines += [
      "",
      "k = 5; features are the encoder output. Validation (what methods are compared and tuned",
      "on): the first 10,000 training images (canonical order) are the queries, the other 50,000",
      "the k-NN bank and the probe's fit set. Test (reported, never tuned on): `train_test` fits",
      "on the 60,000 training images and predicts the 10,000 test images; `seed` fits on the",
      "first 8,000 test images and predicts the last 2,000. Hand-run experiments with the",
      "methods' settings: `docs/tuning.md`.",
      "",
      seeds_note(num_seeds),
      "",
      "Each method's row is followed by its encoder at its random initialisation (the same",
      "seeds, no step): what training bought. The weighted k-NN is InstDisc's (cosine, votes",
      "exp(similarity / 0.1)); the online probe trained beside pre-training.",
      "",
      "| method | config | " + " | ".join(METRICS.values())
      + " | train time | images/s | wall time (train + eval) |",
      "| --- " * (len(METRICS) + 5) + "|",
      "| raw pixels | - | " + " | ".join(mean_std(aggregate([raw]), key) for key in METRICS)
      + " | - | - | - |",
  ]
  ordered = {m: runs[m] for m in CONFIGS if m in runs}
  for method, seed_runs in ordered.items():
    note = f" ({NOTES[method]})" if method in NOTES else ""
    stats = aggregate(seed_runs)
    lines.append(
        f"| {method}{note} | `configs/{CONFIGS[method]}.py` | "
        + " | ".join(mean_std(stats, key) for key in METRICS)
        + f" | {minutes(stats, 'train_seconds')} | "
        f"{mean_std(stats, 'images_per_second', scale=1, unit='', digits=0)} | "
        f"{minutes(stats, 'wall_seconds')} |")
    lines.append(random_init_row(method, seed_runs, METRICS, leading_cells=1, trailing_cells=3))
  write_lines(path, lines + run_details(ordered))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", type=absolute_path, default="",
                      help="TFDS data dir holding mnist")
  parser.add_argument("--workdir", type=absolute_path,
                      default=os.path.join(REPO_ROOT, "runs", "methods"))
  parser.add_argument("--num_epochs", type=int, default=5, help="the budget of every method")
  parser.add_argument("--methods", default=",".join(CONFIGS))
  parser.add_argument("--out", default=os.path.join(REPO_ROOT, "docs", "methods.md"))
  parser.add_argument("--reuse", action="store_true",
                      help="take a method's run of a seed from an earlier run of this script in "
                      "WORKDIR (same budget) instead of training it again")
  parser.add_argument("--seeds", type=int, default=1,
                      help="train each method this many times (seeds S, S + 1, ...)")
  args = parser.parse_args()
  if args.seeds < 1:
    parser.error(f"--seeds={args.seeds}: must be 1 or more")

  runs, reused = {}, []
  for method in args.methods.split(","):
    runs[method] = []
    for seed in config_seeds(CONFIGS[method], args.seeds):
      results, was_reused = train_or_reuse(
          CONFIGS[method], os.path.join(args.workdir, method, f"seed{seed}"), args.data_dir,
          seed, [f"--config.num_epochs={args.num_epochs}"],
          f"comparison_{args.num_epochs}_epochs.json", args.reuse)
      runs[method].append(results)
      if was_reused:
        reused.append(f"{method}, seed {seed}")
  write_report(args.out, runs, next(iter(runs.values()))[0]["raw_pixels"], args.num_epochs,
               args.data_dir, args.seeds, reused)
  print(open(args.out, encoding="utf-8").read())


if __name__ == "__main__":
  main()
