"""Evaluates a run's workdir: metrics, raw-pixel baselines, plots, results.json, report.md."""

import hashlib
import json
import os

import matplotlib
import numpy as np
from tqdm.auto import tqdm

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from cl_jax import checkpointing  # pylint: disable=g-import-not-at-top,wrong-import-position
from cl_jax import data  # pylint: disable=wrong-import-position
from cl_jax import evaluation  # pylint: disable=wrong-import-position
from cl_jax import models  # pylint: disable=wrong-import-position
from cl_jax import multihost  # pylint: disable=wrong-import-position

CACHE_ENV = "CL_JAX_CACHE"


class NoCheckpointError(FileNotFoundError):
  """The workdir holds no checkpoint to evaluate."""


def cache_dir(config):
  return (config.cache_dir or os.environ.get(CACHE_ENV)
          or os.path.join(os.path.expanduser("~"), ".cache", "cl_jax"))


def read_json(path):
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_json(path, obj):
  """Writes atomically (a killed process leaves the old file or the new one)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_metrics(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def embedding_metrics(train_x, train_y, test_x, test_y, config):
  """k-NN under both protocols and metrics, and the linear probe."""
  metrics = evaluation.knn_report(train_x, train_y, test_x, test_y, config.knn_k)
  metrics["linear_probe"] = evaluation.linear_probe_accuracy(
      train_x, train_y, test_x, test_y, int(max(train_y.max(), test_y.max())) + 1)
  return metrics


def raw_pixel_metrics(train, test, config):
  """The same metrics on raw pixels, computed once per data and k, then cached.

  The cache is keyed by the data's fingerprint (not the dataset's name), so two
  copies of a dataset that differ in content or order never share an entry.
  """
  data_key = hashlib.sha256((train.fingerprint() + test.fingerprint()).encode()).hexdigest()
  name = f"raw_pixels_{config.dataset}_k{config.knn_k}_{data_key[:16]}.json"
  path = os.path.join(cache_dir(config), name)
  cached = read_json(path)
  if cached:
    return cached
  flat = lambda split: split.images.reshape(len(split), -1).astype(np.float32) / 255.0
  metrics = embedding_metrics(flat(train), train.labels, flat(test), test.labels, config)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_json(path, metrics)
  return metrics


def restore_params(workdir):
  """Parameters of the latest checkpoint in WORKDIR, as a host pytree (every process calls
  it: opening and closing Orbax's manager are collectives)."""
  checkpointer = checkpointing.Checkpointer(workdir)
  step = checkpointer.latest_step()
  if step is None:
    checkpointer.close()
    raise NoCheckpointError(
        f"no checkpoint in {checkpointing.checkpoint_dir(workdir)}; train first with "
        f"python -m cl_jax.train --config CONFIG --workdir {workdir}")
  params = checkpointer.restore_params(step)
  checkpointer.close()
  return step, params


def plot_tsne(points, labels, path):
  fig, ax = plt.subplots(figsize=(7, 6))
  for label in np.unique(labels):
    chosen = labels == label
    ax.scatter(points[chosen, 0], points[chosen, 1], s=6, label=str(label))
  ax.legend(title="class", markerscale=3, loc="best", fontsize=8)
  ax.set_title(f"t-SNE of {len(points)} test embeddings")
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_series(entries, key, path, ylabel, title):
  """Plots `key` against epoch from metrics.jsonl entries that have it."""
  entries = [m for m in entries if key in m]
  fig, ax = plt.subplots(figsize=(6, 4))
  if entries:
    ax.plot([m["epoch"] for m in entries], [m[key] for m in entries], marker="." if len(
        entries) < 50 else None)
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


ROWS = (("knn_seed", "k-NN seed (test 8k -> 2k), euclidean"),
        ("knn_seed_cosine", "k-NN seed, cosine"),
        ("knn_train_test", "k-NN train -> test, euclidean"),
        ("knn_train_test_cosine", "k-NN train -> test, cosine"),
        ("linear_probe", "linear probe train -> test"))


def results_table(results):
  """Markdown table: the model's metrics next to the raw-pixel baseline."""
  lines = ["| metric | this run | raw pixels |", "| --- | --- | --- |"]
  for key, name in ROWS:
    lines.append(f"| {name} | {100 * results[key]:.2f}% | "
                 f"{100 * results['raw_pixels'][key]:.2f}% |")
  return "\n".join(lines)


def write_report(workdir, config, results):
  path = os.path.join(workdir, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"# {config.method} on {config.dataset}\n\n")
    f.write(f"Checkpoint step {results['eval_step']}, k = {config.knn_k}, evaluated on the "
            "encoder output (not the projection head).\n\n")
    f.write(results_table(results) + "\n\n")
    for key in ("final_loss", "steps", "epochs", "train_seconds", "images_per_second",
                "num_devices", "params_sha256"):
      if key in results:
        f.write(f"- {key}: {results[key]}\n")
    f.write("\n![t-SNE](tsne.png)\n\n![loss](loss.png)\n\n![online k-NN](knn.png)\n")
  return path


def evaluate_run(config, workdir, progress=True):
  """Restores WORKDIR's latest checkpoint and (re)computes every metric and picture.

  Under jax.distributed every process calls it: the restore is an Orbax
  collective; then process 0 alone embeds (on its own devices), computes and
  writes while the others wait for it. Returns the merged results dict
  (training results plus evaluation keys) on every process.
  """
  step, params = restore_params(workdir)
  if not multihost.is_main_process():
    multihost.wait_for_every_process("evaluation_written")
    return read_json(os.path.join(workdir, "results.json"))
  results = _evaluate_on_this_process(config, workdir, step, params, progress)
  multihost.wait_for_every_process("evaluation_written")
  return results


def _evaluate_on_this_process(config, workdir, step, params, progress):
  """The evaluation proper, on this process's devices; writes results, pictures, report."""
  data_dir = config.data_dir or data.default_data_dir()
  train = data.load_split(config.dataset, "train", data_dir, config.eval_train_examples,
                          config.data_download)
  test = data.load_split(config.dataset, "test", data_dir, download=config.data_download)
  model = models.create_model(config)
  # Local devices only (embed's default): a mesh over every process's devices would
  # make the forward passes collectives that the waiting processes never enter.
  train_x, _ = evaluation.embed(model, params, train.images, config.eval_batch_size,
                                progress=progress)
  test_x, _ = evaluation.embed(model, params, test.images, config.eval_batch_size,
                               progress=progress)
  results = read_json(os.path.join(workdir, "results.json"))
  results.update(embedding_metrics(train_x, train.labels, test_x, test.labels, config))
  results["raw_pixels"] = raw_pixel_metrics(train, test, config)
  results["eval_step"] = int(step)
  # Which data the metrics were computed on (content and canonical order).
  results["data_fingerprints"] = {"train": train.fingerprint(), "test": test.fingerprint()}

  with tqdm(total=1, desc="t-SNE", disable=not progress, leave=False) as bar:
    count = min(config.tsne_points, len(test))
    points = evaluation.tsne_2d(test_x[:count], seed=config.seed)
    bar.update(1)
  plot_tsne(points, test.labels[:count], os.path.join(workdir, "tsne.png"))
  entries = read_metrics(workdir)
  plot_series(entries, "loss", os.path.join(workdir, "loss.png"), f"{config.method} loss",
              "training loss")
  plot_series(entries, "knn_monitor", os.path.join(workdir, "knn.png"), "accuracy",
              f"online cosine k-NN (k={config.knn_k}) on a held subset")
  write_json(os.path.join(workdir, "results.json"), results)
  write_report(workdir, config, results)
  return results
