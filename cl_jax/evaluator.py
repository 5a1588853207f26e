"""Evaluates a run's workdir: metrics, raw-pixel baselines, plots, results.json, report.md."""

import functools
import hashlib
import json
import logging
import os
import tempfile

import jax
import matplotlib
import numpy as np
from tqdm.auto import tqdm

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from cl_jax import augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from cl_jax import checkpointing  # pylint: disable=wrong-import-position
from cl_jax import data  # pylint: disable=wrong-import-position
from cl_jax import diagnostics  # pylint: disable=wrong-import-position
from cl_jax import evaluation  # pylint: disable=wrong-import-position
from cl_jax import losses  # pylint: disable=wrong-import-position
from cl_jax import metric_logging  # pylint: disable=wrong-import-position
from cl_jax import models  # pylint: disable=wrong-import-position
from cl_jax import multihost  # pylint: disable=wrong-import-position
from cl_jax import online_probe  # pylint: disable=wrong-import-position
from cl_jax import parallel  # pylint: disable=wrong-import-position
from cl_jax import train_step  # pylint: disable=wrong-import-position

CACHE_ENV = "CL_JAX_CACHE"
# Uniformity and alignment take the first this many test images: uniformity's pairs grow
# as the square.
DIAGNOSTIC_POINTS = 2000


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
  """Writes strict JSON atomically: a killed process leaves the old file or the new one,
  and writers finishing at once each rename their own temporary file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  umask = os.umask(0)
  os.umask(umask)
  os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide a shared cache from other users
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(metric_logging.strict_json_value(obj), f, indent=2, sort_keys=True,
                allow_nan=False)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_metrics(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def embedding_metrics(train_x, train_y, test_x, test_y, config):
  """Every metric of one representation of the training split (its first rows, at least
  those `fit_rows` names) and of the test split.

  Validation (what selections read): k-NN (uniform and weighted) and linear probe fit on
  the training rows after the first `validation_examples`, predicting those. Test
  (reported, never selected on): k-NN under both protocols, the weighted k-NN and the
  probe, fit on the training split (the validation images included, as the standard
  train -> test protocol does).
  """
  validation = config.validation_examples
  limit = lambda x: x[fit_limit(config)]
  num_classes = int(max(train_y.max(), test_y.max())) + 1

  def weighted(name, fit_x, fit_y, query_x, query_y):
    """The weighted k-NN at each of config.weighted_knn_k as metrics[name + str(k)], but
    for a k above the fit set's size (a small dataset): left out, with a warning."""
    ks = []
    for k in config.weighted_knn_k:
      if k > len(fit_x):
        logging.warning("%s%d left out: k is larger than the %d images it would fit on",
                        name, k, len(fit_x))
      else:
        ks.append(k)
    if ks:
      accuracies = evaluation.weighted_knn_accuracies(fit_x, fit_y, query_x, query_y, ks,
                                                      config.weighted_knn_temperature)
      metrics.update({f"{name}{k}": accuracy for k, accuracy in accuracies.items()})

  metrics = evaluation.knn_report(limit(train_x), limit(train_y), test_x, test_y, config.knn_k)
  weighted("weighted_knn", limit(train_x), limit(train_y), test_x, test_y)
  metrics["linear_probe"] = evaluation.linear_probe_accuracy(
      limit(train_x), limit(train_y), test_x, test_y, num_classes)
  if validation > 0:
    fit_x, fit_y = limit(train_x[validation:]), limit(train_y[validation:])
    val_x, val_y = train_x[:validation], train_y[:validation]
    for suffix, metric in (("", "euclidean"), ("_cosine", "cosine")):
      metrics["validation_knn" + suffix] = evaluation.knn_accuracy(
          fit_x, fit_y, val_x, val_y, config.knn_k, metric)
    weighted("validation_weighted_knn", fit_x, fit_y, val_x, val_y)
    metrics["validation_linear_probe"] = evaluation.linear_probe_accuracy(
        fit_x, fit_y, val_x, val_y, num_classes)
  return metrics


def online_probe_metrics(probe, train_x, train_y, test_x, test_y, config):
  """The online probe's (its checkpointed state's) accuracy on the test split and the
  validation split (the first `validation_examples` training rows, which it never trained
  on), and the step it started training at."""
  metrics = {"online_linear_probe": online_probe.accuracy(probe["params"], test_x, test_y),
             "online_probe_start_step": int(probe["start_step"])}
  if config.validation_examples > 0:
    validation = slice(config.validation_examples)
    metrics["validation_online_linear_probe"] = online_probe.accuracy(
        probe["params"], train_x[validation], train_y[validation])
  return metrics


def fit_limit(config):
  """The rows of a fit set the evaluation fits on: all, or the first eval_train_examples."""
  return slice(None) if config.eval_train_examples < 0 else slice(config.eval_train_examples)


def fit_rows(config, num_train):
  """How many of the first training images `embedding_metrics` reads."""
  if config.eval_train_examples < 0:
    return num_train
  return min(num_train, config.validation_examples + config.eval_train_examples)


def evaluation_code_version():
  """SHA-256 of the code that computes the metrics (this module, cl_jax/evaluation.py,
  cl_jax/losses.py, whose normalisation and precision it uses, and cl_jax/data, which
  loads and scales the pixels): a cached baseline computed by other
  code is recomputed, not reused."""
  digest = hashlib.sha256()
  for module in (evaluation.__file__, __file__, data.__file__, losses.__file__):
    with open(module, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def cached_metrics(name, identity, train, test, config, compute):
  """`compute()` (a baseline's metrics) once per representation, data, settings and code,
  then read from the cache.

  The key is `identity` (what names the representation beyond `name`), the data's
  fingerprints (not the dataset's name), the settings the metrics read (k, the validation
  split, the fit limit, the weighted k-NN) and the evaluation code's digest, so two copies
  of a dataset that differ in content or order never share an entry, and a changed
  protocol or a fixed metric computes its baseline anew.
  """
  settings = (f"k={config.knn_k};validation={config.validation_examples};"
              f"fit={config.eval_train_examples};weighted={tuple(config.weighted_knn_k)},"
              f"{config.weighted_knn_temperature};code={evaluation_code_version()}")
  key = hashlib.sha256((identity + train.fingerprint() + test.fingerprint() + settings).encode())
  path = os.path.join(cache_dir(config),
                      f"{name}_{config.dataset}_k{config.knn_k}_{key.hexdigest()[:16]}.json")
  try:
    cached = read_json(path)
  except ValueError:  # an unreadable entry (a disk that filled up): computed again
    cached = {}
  if cached:
    return cached
  metrics = compute()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_json(path, metrics)
  return metrics


def raw_pixel_metrics(train, test, config):
  """The metrics on raw pixels, computed once per data, settings and code (`cached_metrics`)."""
  flat = lambda split: data.to_float(split.images).reshape(len(split), -1)
  return cached_metrics("raw_pixels", "", train, test, config, lambda: embedding_metrics(
      flat(train), train.labels, flat(test), test.labels, config))


# The random-initialisation cache names an encoder by its features of this many images.
IDENTITY_IMAGES = 256


def random_init_metrics(train, test, config, initial_variables, embed_initial):
  """The metrics of the encoder at its random initialisation (`initial_variables`, whose
  features `embed_initial(images)` gives), computed once per encoder, data, settings and
  code (`cached_metrics`). The encoder is named by the bytes of its variables and of its
  features of the first IDENTITY_IMAGES training images: another seed, architecture,
  dtype or forward pass gives other bytes, so its own entry."""
  identity = hashlib.sha256(np.ascontiguousarray(
      embed_initial(train.images[:IDENTITY_IMAGES])).tobytes())
  leaves, structure = jax.tree.flatten(initial_variables)
  identity.update(str(structure).encode())
  for leaf in jax.device_get(leaves):
    leaf = np.ascontiguousarray(leaf)
    identity.update(f"{leaf.shape}{leaf.dtype}".encode() + leaf.tobytes())
  identity = identity.hexdigest()
  return cached_metrics("random_init", identity, train, test, config, lambda: embedding_metrics(
      embed_initial(train.images), train.labels, embed_initial(test.images), test.labels,
      config))


def restore_variables(workdir):
  """(step, Flax variables for evaluation, the online probe's state or None) of the
  latest checkpoint in WORKDIR, as host pytrees: the variables are the parameters and
  BatchNorm's running averages where the model has them (every process calls it: opening
  and closing Orbax's manager are collectives)."""
  checkpointer = checkpointing.Checkpointer(workdir)
  step = checkpointer.latest_step()
  if step is None:
    checkpointer.close()
    raise NoCheckpointError(
        f"no checkpoint in {checkpointing.checkpoint_dir(workdir)}; train first with "
        f"python -m cl_jax.train --config CONFIG --workdir {workdir}")
  tree = checkpointer.restore_tree(step)
  checkpointer.close()
  return step, train_step.eval_variables(tree), tree.get(checkpointing.PROBE_KEY)


def random_init_variables(config, model, image_shape):
  """The Flax variables of the run's model before its first step: the trainer's
  initialisation from the same seed (`train_step.run_keys`)."""
  init_key = train_step.run_keys(config.seed)[0]
  return train_step.initial_variables(model, init_key, image_shape)[0]


def plot_tsne(points, labels, path, names=None):
  """Scatter of the 2-D points by label; the legend shows `names[label]`, or the integer
  label without names."""
  fig, ax = plt.subplots(figsize=(7, 6))
  for label in np.unique(labels):
    chosen = labels == label
    ax.scatter(points[chosen, 0], points[chosen, 1], s=6,
               label=names[label] if names else str(label))
  ax.legend(title="class", markerscale=3, loc="best", fontsize=8)
  ax.set_title(f"t-SNE of {len(points)} test embeddings")
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_series(entries, keys, path, ylabel, title, baseline=None):
  """Plots each of `keys` ({metrics.jsonl key: legend label}) against epoch from the entries
  that have it; `baseline` = (key, label): that key's last logged value (a constant, such as
  the raw pixels' accuracy on the same data) as a dashed line, the level to beat."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label in keys.items():
    points = [(m["epoch"], m[key]) for m in entries if key in m]
    if points:
      ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
  baseline_values = [m[baseline[0]] for m in entries if baseline and baseline[0] in m]
  if baseline_values:
    ax.axhline(baseline_values[-1], color="gray", linestyle="--", label=baseline[1])
  if len(ax.lines) > 1:
    ax.legend(loc="best", fontsize=8)
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def result_rows(weighted_knn_k=()):
  """(results.json key, what it is) of every metric, validation rows first, as selections
  read those; the weighted k-NN at each of `weighted_knn_k`."""
  weighted = lambda prefix, place: [
      (f"{prefix}weighted_knn{k}", f"{place}: weighted k-NN, k = {k}") for k in weighted_knn_k]
  return (
      [("validation_knn", "validation: k-NN (rest of train -> validation), euclidean"),
       ("validation_knn_cosine", "validation: k-NN, cosine"),
       *weighted("validation_", "validation"),
       ("validation_linear_probe", "validation: linear probe (rest of train -> validation)"),
       ("validation_online_linear_probe", "validation: online linear probe"),
       ("knn_seed", "test: k-NN seed (test 8k -> 2k), euclidean"),
       ("knn_seed_cosine", "test: k-NN seed, cosine"),
       ("knn_train_test", "test: k-NN train -> test, euclidean"),
       ("knn_train_test_cosine", "test: k-NN train -> test, cosine"),
       *weighted("", "test"),
       ("linear_probe", "test: linear probe train -> test"),
       ("online_linear_probe", "test: online linear probe")])


# The columns of the results table beside the run's own: (results.json key, header).
BASELINES = (("random_init", "its random initialisation"), ("raw_pixels", "raw pixels"))


def results_table(results):
  """Markdown table: the model's metrics next to the same encoder at its random
  initialisation and the raw pixels (the validation rows where the run has a validation
  split; "-" where a baseline has no such metric: the online probe)."""
  percent = lambda value: "-" if value is None else f"{100 * value:.2f}%"
  baselines = [(key, header) for key, header in BASELINES if key in results]
  lines = ["| metric | this run | " + " | ".join(h for _, h in baselines) + " |",
           "| --- | --- |" + " --- |" * len(baselines)]
  for key, name in result_rows(results.get("weighted_knn_k", ())):
    if key in results:
      cells = [percent(results[key])] + [percent(results[b].get(key)) for b, _ in baselines]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# The headline metrics of the closing summary: (results.json key, name).
SUMMARY_ROWS = (("validation_knn", "validation k-NN"), ("knn_train_test", "test k-NN train -> test"),
                ("linear_probe", "test linear probe"))


def summary(results, workdir, config):
  """The few lines a run ends with on the console: its headline metrics against raw pixels
  and where its report, plots and checkpoints are."""
  lines = []
  if "eval_step" in results:
    lines.append(f"{config.method} on {config.dataset}, step {results['eval_step']} "
                 f"(k = {results.get('knn_k', config.knn_k)}, encoder features):")
    for key, name in SUMMARY_ROWS:
      if key in results:
        baselines = ", ".join(f"{header} {100 * results[b][key]:.2f}%"
                              for b, header in reversed(BASELINES) if key in results.get(b, {}))
        lines.append(f"  {name}: {100 * results[key]:.2f}% ({baselines})")
    lines.append(f"report: {os.path.join(workdir, 'report.md')} (tsne.png, loss.png, knn.png "
                 "beside it)")
  else:
    lines.append(f"trained to step {results.get('steps')}; no evaluation "
                 f"(python -m cl_jax.evaluate --workdir {workdir})")
  lines.append(f"results: {os.path.join(workdir, 'results.json')}; checkpoints: "
               f"{checkpointing.checkpoint_dir(workdir)}")
  return lines


def positive_pairs(images, config):
  """Two augmented views (config.augment) of each uint8 image, as uint8 [2N, ...]: first
  views, then second views. The keys come from config.seed alone, so every evaluation
  draws the same views. Rounding to uint8 (what evaluation.embed takes) moves a pixel by
  at most 1/510."""
  keys = jax.random.split(jax.random.key(config.seed), len(images))
  # Jitted: compiles faster than the op-by-op dispatch of the vmapped warps.
  two_views = jax.jit(functools.partial(augment.two_views, config=config.augment))
  views = jax.device_get(two_views(images, keys))
  return np.round(255 * np.concatenate(views)).astype(np.uint8)


def representation_diagnostics(test_z, pairs_z, knn_cosine):
  """Collapse diagnostics of one representation: effective rank of the whole test split,
  uniformity of its first DIAGNOSTIC_POINTS rows, alignment of `pairs_z` (the embedded
  `positive_pairs`), next to that representation's cosine k-NN accuracy."""
  first, second = np.split(pairs_z, 2)
  return {"dimension": int(test_z.shape[1]),
          "effective_rank": diagnostics.effective_rank(test_z),
          "uniformity": diagnostics.uniformity(test_z[:DIAGNOSTIC_POINTS]),
          "alignment": diagnostics.alignment(first, second),
          "knn_train_test_cosine": knn_cosine}


def diagnostics_table(found):
  """Markdown table of results["diagnostics"], with a line on how to read it."""
  features, projections = found["features"], found["projections"]
  lines = [
      "| diagnostic | encoder features | projections |", "| --- | --- | --- |",
      f"| effective rank (of the dimension) | {features['effective_rank']:.1f} of "
      f"{features['dimension']} | {projections['effective_rank']:.1f} of "
      f"{projections['dimension']} |"]
  for key, name, form in (
      ("uniformity", f"uniformity, t = 2 (first {DIAGNOSTIC_POINTS} test images)", ".3f"),
      ("alignment", f"alignment, alpha = 2 (two views of the first {DIAGNOSTIC_POINTS})", ".3f"),
      ("knn_train_test_cosine", "k-NN train -> test, cosine", ".2%")):
    lines.append(f"| {name} | {features[key]:{form}} | {projections[key]:{form}} |")
  lines += ["", "Wang & Isola's alignment (mean squared distance of two views' normalised "
            "embeddings; 0 to 4, lower is closer) and uniformity (log mean exp(-2 d^2) over "
            "pairs; 0 to about -4, lower is more spread); Roy & Vetterli's effective rank. "
            "A collapse shows as effective rank near 1 and uniformity near 0 (alignment is "
            "then 0 too, trivially), a dimensional collapse as an effective rank far below "
            "the dimension; a plateau as these numbers and the online k-NN (knn.png) no "
            "longer moving from one checkpoint to the next."]
  return "\n".join(lines)


def write_report(workdir, config, results):
  path = os.path.join(workdir, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"# {config.method} on {config.dataset}\n\n")
    f.write(f"Checkpoint step {results['eval_step']}, k = {config.knn_k}, evaluated on the "
            "encoder output (not the projection head), beside the same encoder at its random "
            "initialisation (what training bought) and the raw pixels. The weighted k-NN is "
            "cosine with votes exp(similarity / "
            f"{config.weighted_knn_temperature}). The validation split is the first "
            f"{config.validation_examples} training images (canonical order): choose runs and "
            "settings on its rows; the test rows are the report.\n\n")
    f.write(results_table(results) + "\n\n")
    f.write("## Diagnostics\n\n" + diagnostics_table(results["diagnostics"]) + "\n\n")
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
  writes while the others wait for it (and raise if it fails). Returns the merged
  results dict (training results plus evaluation keys) on every process.
  """
  step, variables, probe = restore_variables(workdir)
  devices = parallel.local_devices(config)
  results = multihost.on_main_process(
      "evaluation", lambda: _evaluate_on_this_process(config, workdir, step, variables,
                                                      probe, devices, progress))
  if results is None:  # another process: process 0 wrote them
    results = read_json(os.path.join(workdir, "results.json"))
  return results


def _evaluate_on_this_process(config, workdir, step, variables, probe, devices,
                              progress):
  """The evaluation proper, on this process's `devices` (its share of the run's devices);
  writes results, pictures, report."""
  data_dir = config.data_dir or data.default_data_dir()
  train = data.load_for(config, "train", data_dir)
  data.split_validation(train, config.validation_examples)  # refuses a split it cannot make
  train = train[:fit_rows(config, len(train))]
  test = data.load_for(config, "test", data_dir)
  model = models.create_model(config)
  # Only the run's own local devices (embed's default is every local device): a mesh over
  # every process's devices would make the forward passes collectives that the waiting
  # processes never enter.
  embed_with = lambda variables, images: evaluation.embed(
      model, variables, images, batch_size=config.eval_batch_size, devices=devices,
      progress=progress)
  embed = functools.partial(embed_with, variables)
  train_x, train_p = embed(train.images)
  test_x, test_p = embed(test.images)
  results = read_json(os.path.join(workdir, "results.json"))
  results.update(embedding_metrics(train_x, train.labels, test_x, test.labels, config))
  if probe is not None:
    results.update(online_probe_metrics(probe, train_x, train.labels, test_x,
                                        test.labels, config))
  results["weighted_knn_k"] = list(config.weighted_knn_k)
  # What training bought: the same metrics of the encoder as it started.
  initial = random_init_variables(config, model, train.images.shape[1:])
  results["random_init"] = random_init_metrics(
      train, test, config, initial, lambda images: embed_with(initial, images)[0])
  results["raw_pixels"] = raw_pixel_metrics(train, test, config)
  results["eval_step"] = int(step)
  results["knn_k"] = config.knn_k
  # Which data the metrics were computed on (content and canonical order).
  results["data_fingerprints"] = {"train": train.fingerprint(), "test": test.fingerprint()}
  pairs = positive_pairs(test.images[:DIAGNOSTIC_POINTS], config)
  pairs_x, pairs_p = embed(pairs)
  fit = fit_limit(config)
  results["diagnostics"] = {
      "features": representation_diagnostics(test_x, pairs_x, results["knn_train_test_cosine"]),
      "projections": representation_diagnostics(
          test_p, pairs_p, evaluation.knn_accuracy(train_p[fit], train.labels[fit], test_p,
                                                   test.labels, config.knn_k, "cosine"))}

  with tqdm(total=1, desc="t-SNE", disable=not progress, leave=False) as bar:
    count = min(config.tsne_points, len(test))
    points = evaluation.tsne_2d(test_x[:count], seed=config.seed)
    bar.update(1)
  plot_tsne(points, test.labels[:count], os.path.join(workdir, "tsne.png"),
            data.dataset_info(config.dataset, data_dir, config.image_size).class_names)
  entries = read_metrics(workdir)
  plot_series(entries, {"loss": "loss"}, os.path.join(workdir, "loss.png"),
              f"{config.method} loss", "training loss")
  plot_series(entries, {"knn_monitor": "k-NN, encoder features",
                        "knn_monitor_projection": "k-NN, projections",
                        "online_probe_monitor": "online linear probe"},
              os.path.join(workdir, "knn.png"), "accuracy",
              f"online monitor: cosine k-NN (k={config.knn_k}), probe; validation queries",
              baseline=("knn_monitor_raw_pixels", "raw pixels, same subset"))
  write_json(os.path.join(workdir, "results.json"), results)
  write_report(workdir, config, results)
  return results
