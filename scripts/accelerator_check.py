"""Checks and times cl_jax on an accelerator in one go; writes what it measured as JSON.

  python scripts/accelerator_check.py --idx_dir DIR_WITH_MNIST_IDX_FILES --out OUT_DIR

Meant for a GPU/TPU machine, also one without TensorFlow (MNIST is read from
the IDX files, TensorBoard is skipped). In order:
1. max-pool gradients with ties, the custom CPU kernels against XLA's
   (values and gradients on a real MNIST batch), on the accelerator;
2. NT-Xent's loss and gradient on the accelerator against float64 NumPy, with
   the similarity matmul at HIGHEST (ours) and at the backend's default; batch-all
   triplet's (sort, searchsorted, cumsum) on the accelerator against CPU;
3. the default config (configs/mnist.py) trained and evaluated end to end, twice, each
   in a fresh process sharing one cache directory: the first compiles every program
   and computes the baselines' metrics, the second loads both (what a repeated run of
   the README's command sees);
4. steps_per_call=1 against the automatic choice: the same parameters?
5. training throughput (scripts/benchmark.py's loop): batch sizes, steps per
   call, float32 / bfloat16, XLA / custom kernels; the PyTorch reference too
   where torch sees the GPU;
5b. (stream) the streamed data path (cl_jax/streaming.py, Grain: carry its wheel where
   the image lacks it) against the data on the device: the trainer's images/s, and the
   parameters against one step per call on the device (the same batches);
6. (--sections drift) where one step per call and 8 per call part, per step,
   at the default matmul precision and at HIGHEST;
7. (--sections ablations) the batch-norm and triplet-mining ablations of
   docs/tuning.md, 5 epochs each (docs/methods.md's budget), float32 products
   (and BYOL in bf16): the monitor per epoch and k-NN train -> test.
Every section prints its numbers; none passes or fails on time.

On a lent machine whose image has no ml_collections (it has neither TensorFlow nor
network), carry its pure-Python wheel and the IDX files in an ignored folder of the
checkout, and put the wheel on the path (Python imports from a wheel file as from a zip):

  mkdir -p runs/gpu && cp ../shared/data/mnist/*.gz runs/gpu/ \
    && pip download --no-deps -d runs/gpu ml_collections==1.1.0   # here: ~11.5 MB in all
  # there (carry runs/gpu; --out outside $OUT, then copy the report.json files into it):
  PYTHONPATH=$(ls $PWD/runs/gpu/ml_collections-*.whl) python scripts/accelerator_check.py \
    --idx_dir runs/gpu --out /tmp/acc

Section 5b needs Grain, a compiled wheel (it cannot be imported from the zip): download it
and what it imports for the image's Python (`pip download --no-deps --python-version 3.X
--only-binary=:all: -d runs/gpu/wheels grain array_record cloudpickle portpicker`) and
`pip install --no-deps runs/gpu/wheels/*.whl` there first; without it the section reports
the import error and the others run.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def idx_loader(idx_dir):
  """A stand-in for data.load_split that reads the IDX files (no TensorFlow needed), in the
  same canonical order."""
  from cl_jax import data  # pylint: disable=g-import-not-at-top
  from cl_jax.data import idx  # pylint: disable=g-import-not-at-top
  cache = {}

  def load_split(dataset, split, data_dir=None, max_examples=-1, download=False):
    del dataset, data_dir, download
    if split not in cache:
      images, labels = idx.read_idx_split(idx_dir, split)
      labels = labels.astype(np.int32)
      order = data.canonical_order(images, labels)
      cache[split] = data.Split(images=images[order], labels=labels[order])
    whole = cache[split]
    if max_examples < 0:
      return whole
    return data.Split(images=whole.images[:max_examples], labels=whole.labels[:max_examples])
  return load_split


def record_split(split):
  """A records.RecordSplit over an in-memory data.Split: what the streamed path reads where
  TFDS's ArrayRecord data source is absent (the images come from the IDX files)."""
  from cl_jax.data import records  # pylint: disable=g-import-not-at-top

  class Source:  # a random-access source as TFDS's data source is: example i as a dict
    def __len__(self):
      return len(split)

    def __getitem__(self, i):
      return {"image": split.images[i], "label": split.labels[i]}
  return records.RecordSplit([Source()], np.zeros(len(split), np.int32), np.arange(len(split)),
                             split.labels, split.image_shape, 0)


def mnist_info(dataset, data_dir=None, image_size=0):
  """A stand-in for data.dataset_info (TFDS's metadata) for MNIST as the IDX files hold it."""
  del data_dir, image_size
  assert dataset == "mnist", dataset
  from cl_jax import data  # pylint: disable=g-import-not-at-top
  return data.DatasetInfo(name="mnist", image_shape=(28, 28, 1), num_classes=10,
                          class_names=[str(i) for i in range(10)], test_split="test",
                          split_sizes={"train": 60000, "test": 10000})


def relative_error(got, expected):
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  return float(np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-30))


def check_kernels(train):
  """Section 1: the max pool's tie rule and the custom kernels against XLA's, on device."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from cl_jax import losses, models  # pylint: disable=g-import-not-at-top
  from configs import mnist_seed  # pylint: disable=g-import-not-at-top
  out = {}
  blank = lambda b: jnp.sum(models.max_pool_2x2(jax.nn.relu(jnp.zeros((1, 28, 28, 1)) + b)))
  out["blank_image_bias_gradient (expect 196)"] = float(jax.grad(blank)(0.5))
  x = jnp.asarray(train.images[:256], jnp.float32) / 255.0
  h = jax.nn.relu(x * 0.7 + 0.1)  # every background window ties at 0.1
  cotangent = jnp.asarray(np.random.default_rng(0).normal(size=(256, 14, 14, 1)), jnp.float32)
  ours = jax.grad(lambda h: jnp.sum(models.max_pool_2x2(h) * cotangent))(h)
  flax = jax.grad(lambda h: jnp.sum(nn.max_pool(h, (2, 2), (2, 2)) * cotangent))(h)
  out["max_pool_gradient_equal_to_flax_on_mnist"] = bool(np.array_equal(ours, flax))
  config = mnist_seed.get_config()
  for precision in ("default", "highest"):
    config.matmul_precision = precision
    built = {}
    for kernels in ("cpu", "xla"):
      config.model.kernels = kernels
      built[kernels] = models.create_model(config)
    params = built["cpu"].init(jax.random.key(0), x[:1])["params"]
    loss = lambda p, m: losses.nt_xent(*jnp.split(m.apply({"params": p}, x)[1], 2), 0.5)
    values = {k: jax.jit(lambda p, m=m: m.apply({"params": p}, x)[1])(params)
              for k, m in built.items()}
    grads = {k: jax.jit(jax.grad(lambda p, m=m: loss(p, m)))(params) for k, m in built.items()}
    out[f"kernels_cpu_vs_xla_{precision}"] = {
        "projections_relative_error": relative_error(values["cpu"], values["xla"]),
        "gradient_relative_error_worst_leaf": max(
            relative_error(a, b) for a, b in zip(jax.tree.leaves(grads["cpu"]),
                                                 jax.tree.leaves(grads["xla"])))}
  return out


def nt_xent_numpy(z1, z2, t):
  """Float64 NT-Xent and its gradient with respect to z1, z2 (closed form)."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  norms = np.linalg.norm(z, axis=1, keepdims=True)
  u = z / norms
  n = len(z1)
  s = u @ u.T / t
  np.fill_diagonal(s, -np.inf)
  p = np.exp(s - s.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  positive = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
  loss = np.mean(-np.log(p[np.arange(2 * n), positive]))
  target = np.zeros_like(p)
  target[np.arange(2 * n), positive] = 1
  g_s = (p - target) / (2 * n) / t  # d loss / d (u u^T) before symmetrising
  g_u = (g_s + g_s.T) @ u
  g_z = (g_u - u * np.sum(g_u * u, axis=1, keepdims=True)) / norms
  return loss, g_z[:n], g_z[n:]


def check_precision():
  """Section 2: NT-Xent on device against float64, HIGHEST (ours) and the backend default;
  batch-all triplet on device against CPU."""
  from cl_jax import losses  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(512, 64)).astype(np.float32)
  z2 = (z1 + 0.3 * rng.normal(size=z1.shape)).astype(np.float32)
  out = {}
  for t in (0.5, 0.1):
    loss, g1, g2 = nt_xent_numpy(z1, z2, t)
    value, grads = jax.jit(jax.value_and_grad(lambda a, b, t=t: losses.nt_xent(a, b, t),
                                              argnums=(0, 1)))(z1, z2)
    default = losses.HIGHEST
    try:  # the same loss with the backend's default matmul precision, for comparison
      losses.HIGHEST = jax.lax.Precision.DEFAULT
      value_default, grads_default = jax.jit(jax.value_and_grad(
          lambda a, b, t=t: losses.nt_xent(a, b, t), argnums=(0, 1)))(z1, z2)
    finally:
      losses.HIGHEST = default
    expected = np.concatenate([g1, g2])
    out[f"t={t}"] = {
        "loss_float64": loss,
        "loss_relative_error_highest": abs(float(value) - loss) / loss,
        "gradient_relative_error_highest": relative_error(np.concatenate(grads), expected),
        "loss_relative_error_backend_default": abs(float(value_default) - loss) / loss,
        "gradient_relative_error_backend_default": relative_error(
            np.concatenate(grads_default), expected)}
  # Batch-all triplet rests on sort, searchsorted and cumsum, lowered differently per
  # backend: its value and gradient on the device against the same function on CPU
  # (which tests/test_methods.py checks against float64 NumPy), index labels as in training.
  # 16 dimensions, views far apart: many triplets violate the margin (the 64-d pair above
  # has none).
  a, b = rng.normal(size=(2, 512, 16)).astype(np.float32)
  labels = np.arange(len(a), dtype=np.int32)
  batch_all = jax.value_and_grad(lambda a, b: losses.batch_all_triplet(a, b, labels, 0.5),
                                 argnums=(0, 1))
  value, grads = jax.jit(batch_all)(a, b)
  cpu = jax.devices("cpu")[0]
  value_cpu, grads_cpu = jax.jit(batch_all)(jax.device_put(a, cpu), jax.device_put(b, cpu))
  out["batch_all_triplet"] = {
      "loss_cpu": float(value_cpu),
      "loss_relative_error_vs_cpu": abs(float(value) - float(value_cpu)) / float(value_cpu),
      "gradient_relative_error_vs_cpu": relative_error(np.concatenate(grads),
                                                       np.concatenate(grads_cpu))}
  return out


def check_throughput(quick):
  """Section 5: images/s of the training loop (and the PyTorch reference)."""
  import benchmark  # pylint: disable=g-import-not-at-top
  rows = []
  grid = [(128, 0, "float32", "auto"), (128, 1, "float32", "auto"),
          (128, 0, "float32", "cpu"), (1024, 0, "float32", "auto"),
          (1024, 0, "bfloat16", "auto"), (4096, 0, "float32", "auto")]
  if quick:
    grid = grid[:2]
  for batch, per_call, dtype, kernels in grid:
    result = benchmark.measure_jax(batch, steps=200, warmup=50, parallel="shard_map",
                                   dtype=dtype, steps_per_call=per_call, kernels=kernels)
    result.update(framework="cl_jax", batch_size=batch,
                  images_per_second=batch / result["seconds_per_step"])
    rows.append(result)
    print(f"  cl_jax batch {batch:5d} per_call {result['steps_per_call']:3d} {dtype:8s} "
          f"{result['kernels']:3s}: {result['images_per_second']:10.0f} img/s, "
          f"{1e3 * result['seconds_per_step']:.3f} ms/step, compile {result['compile_seconds']:.1f} s",
          flush=True)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    if torch.cuda.is_available():
      for batch in (128, 1024):
        for fast in (False, True):  # eager, and compiled with CUDA graphs
          result = benchmark.measure_torch(batch, steps=200, warmup=20, fast=fast)
          result.update(framework="torch_fast" if fast else "torch", batch_size=batch,
                        images_per_second=batch / result["seconds_per_step"])
          rows.append(result)
          print(f"  {result['framework']:10s} batch {batch:5d}: "
                f"{result['images_per_second']:10.0f} img/s, compile "
                f"{result['compile_seconds']:.1f} s ({result['device']})", flush=True)
  except ImportError:
    pass
  # CIFAR shape: configs/cifar10.py's ResNet-18 step, bf16 on both sides (issue 25's aim on
  # one H200: at most 3 s per CIFAR-10 epoch).
  for batch in ((256,) if quick else (256, 512)):
    runs = [("cl_jax", lambda b=batch: benchmark.measure_jax(
        b, steps=50, warmup=10, parallel="shard_map", dtype="bfloat16", workload="cifar10"))]
    try:
      import torch  # pylint: disable=g-import-not-at-top
      if torch.cuda.is_available():
        for fast in (False, True):
          runs.append(("torch_fast" if fast else "torch", lambda b=batch, f=fast:
                       benchmark.measure_torch(b, steps=50, warmup=10, workload="cifar10",
                                               fast=f, dtype="bfloat16")))
    except ImportError:
      pass
    for framework, measure in runs:
      result = measure()
      result.update(framework=framework, batch_size=batch, workload="cifar10",
                    images_per_second=batch / result["seconds_per_step"])
      rows.append(result)
      print(f"  cifar10 {framework:14s} batch {batch:4d} bf16: "
            f"{result['images_per_second']:9.0f} img/s, "
            f"{50000 / result['images_per_second']:.2f} s per CIFAR-10 epoch", flush=True)
  return rows


def quick_config(name, workdir_overrides):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{name}").get_config()
  config.progress_bar = False
  for key, value in workdir_overrides.items():
    config[key] = value
  return config


def check_steps_per_call(out_dir):
  """Section 4: one step per call against the automatic choice, 2 epochs of 4,096 images."""
  from cl_jax import trainer  # pylint: disable=g-import-not-at-top
  shas = {}
  for per_call in (1, 0):
    config = quick_config("mnist", dict(max_train_examples=4096, num_epochs=2,
                                        evaluate_at_end=False, eval_every_epochs=0,
                                        steps_per_call=per_call))
    start = time.perf_counter()
    results = trainer.train_and_evaluate(config, os.path.join(out_dir, f"per_call_{per_call}"))
    shas[per_call] = results["params_sha256"]
    print(f"  steps_per_call={per_call}: {results['steps']} steps in "
          f"{time.perf_counter() - start:.1f} s, loss {results['final_loss']:.6f}", flush=True)
  return {"equal_params_sha256": shas[1] == shas[0], "sha256": shas}


def check_streaming(out_dir, quick):
  """Section 5b: the default config for 2,000 steps (200 with --quick), monitor and
  evaluation off, with the data on the device (automatic steps per call, then one step per
  call) and streamed."""
  from cl_jax import trainer  # pylint: disable=g-import-not-at-top
  runs = {}
  for name, overrides in (("device", {}), ("device_one_step_per_call", {"steps_per_call": 1}),
                          ("stream", {"data_placement": "stream"})):
    config = quick_config("mnist", {"max_steps": 200 if quick else 2000,
                                    "evaluate_at_end": False, "eval_every_epochs": 0,
                                    "data_placement": "device", **overrides})
    start = time.perf_counter()
    results = trainer.train_and_evaluate(config, os.path.join(out_dir, f"placement_{name}"))
    runs[name] = {key: results[key] for key in ("images_per_second", "first_call_seconds",
                                                "train_seconds", "params_sha256")}
    runs[name]["wall_seconds"] = time.perf_counter() - start
    print(f"  {name}: {runs[name]['images_per_second']:.0f} images/s, "
          f"{runs[name]['wall_seconds']:.1f} s", flush=True)
  runs["stream_equals_one_step_per_call"] = (runs["stream"]["params_sha256"]
                                             == runs["device_one_step_per_call"]["params_sha256"])
  return runs


def check_drift(train):
  """Section 6: the per-step losses of 16 steps run one per call against two calls of 8,
  at the backend's default matmul precision and at HIGHEST: where do they part?"""
  from cl_jax import models, trainer  # pylint: disable=g-import-not-at-top
  from cl_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  out = {}
  for precision in ("default", "highest"):
    losses, params = {}, {}
    for per_call in (1, 8):
      config = quick_config("mnist", dict(matmul_precision=precision))
      spe = len(train) // config.batch_size
      training = trainer.OnDeviceTraining(config, jax.local_devices(), train.images,
                                          train.labels, 20 * spe, per_call)
      init_key, shuffle_key, augment_key = jax.random.split(jax.random.key(0), 3)
      state = training.dp.put_state(train_step_lib.create_train_state(
          models.create_model(config), train_step_lib.create_optimizer(config, spe, 20 * spe),
          init_key, (28, 28, 1), config))
      seen = []
      for step in range(0, 16, per_call):
        state, metrics = training.run(state, step, per_call, shuffle_key, augment_key)
        seen += [float(v) for v in np.asarray(metrics["loss"])[:per_call]]
      losses[per_call], params[per_call] = seen, jax.device_get(state.params)
    differences = [abs(a - b) for a, b in zip(losses[1], losses[8])]
    out[precision] = {
        "first_differing_step": next((i + 1 for i, d in enumerate(differences) if d > 0), None),
        "loss_differences": differences,
        "params_after_16_relative_error": max(relative_error(a, b) for a, b in zip(
            jax.tree.leaves(params[1]), jax.tree.leaves(params[8])))}
  return out


# Section 7's runs: (name, config file, overrides). The 5-epoch budget of docs/methods.md.
ABLATIONS = [
    ("triplet_batch_all", "mnist_triplet", {"triplet_mining": "batch_all"}),
    ("triplet_semi_hard", "mnist_triplet", {"triplet_mining": "semi_hard"}),
    ("triplet_soft_margin", "mnist_triplet", {"triplet_mining": "soft_margin"}),
    ("triplet_batch_hard", "mnist_triplet", {"triplet_mining": "batch_hard"}),
    ("simclr", "mnist", {}),
    ("simclr_bn_head", "mnist", {"model.head_norm": "batch"}),
    ("byol_bn_projector_predictor", "mnist_byol", {}),
    ("byol_no_bn", "mnist_byol", {"model.head_norm": "none", "model.predictor_norm": "none"}),
    ("byol_bn_projector", "mnist_byol", {"model.predictor_norm": "none"}),
    ("byol_bn_predictor", "mnist_byol", {"model.head_norm": "none"}),
    ("byol_bn_bf16", "mnist_byol", {"dtype": "bfloat16"}),
]


def check_ablations(out_dir, train, names):
  """Section 7: each run of ABLATIONS (or those in `names`) trained for 5 epochs at HIGHEST
  matmul precision (float32 products, as on CPU); the online monitor (validation queries)
  after each epoch and the evaluation's metrics of the encoder's features: validation
  first (compare ablations on those), test."""
  from cl_jax import data, evaluation, trainer  # pylint: disable=g-import-not-at-top
  from cl_jax import models  # pylint: disable=g-import-not-at-top
  from cl_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  from cl_jax.checkpointing import Checkpointer  # pylint: disable=g-import-not-at-top
  from cl_jax import evaluator  # pylint: disable=g-import-not-at-top
  from cl_jax.evaluator import read_metrics  # pylint: disable=g-import-not-at-top
  test = data.load_split("mnist", "test")
  out = {}
  for name, config_name, overrides in ABLATIONS:
    if names and name not in names:
      continue
    config = quick_config(config_name, dict(num_epochs=5, matmul_precision="highest",
                                            evaluate_at_end=False, eval_every_epochs=1))
    config.update_from_flattened_dict(overrides)
    workdir = os.path.join(out_dir, f"ablation_{name}")
    start = time.perf_counter()
    results = trainer.train_and_evaluate(config, workdir)
    logged = read_metrics(workdir)
    checkpointer = Checkpointer(workdir)
    variables = train_step_lib.eval_variables(checkpointer.restore_tree(results["steps"]))
    checkpointer.close()
    model = models.create_model(config)
    train_x, _ = evaluation.embed(model, variables, train.images, 2000)
    test_x, _ = evaluation.embed(model, variables, test.images, 2000)
    out[name] = {
        "config": config_name, "overrides": overrides, "final_loss": results["final_loss"],
        "train_seconds": results["train_seconds"],
        "finite_losses": bool(np.all(np.isfinite([m["loss"] for m in logged if "loss" in m]))),
        # Validation (what an ablation is judged on) and test (reported) metrics.
        **evaluator.embedding_metrics(train_x, train.labels, test_x, test.labels, config),
        "monitor": [{k: m[k] for k in m if k.startswith("knn_monitor")}
                    for m in logged if "knn_monitor" in m],
        "seconds": time.perf_counter() - start}
    print(f"  {name}: {json.dumps(out[name])}", flush=True)
    with open(os.path.join(out_dir, "ablations.json"), "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)
  return out


def check_default_run(out_dir, config_name, cache_dir, overrides):
  """Section 3, in one process: configs/<config_name>.py (with `overrides`: "field=value"
  strings) trained and evaluated end to end, its programs in `cache_dir`'s compilation
  cache."""
  import ast  # pylint: disable=g-import-not-at-top
  from cl_jax import compilation_cache, trainer  # pylint: disable=g-import-not-at-top
  config = quick_config(config_name, {"cache_dir": cache_dir})
  for override in overrides:
    field, value = override.split("=", 1)
    config.update_from_flattened_dict({field: ast.literal_eval(value)})
  compilation_cache.enable(config)
  workdir = os.path.join(out_dir, config_name)
  start = time.perf_counter()
  results = trainer.train_and_evaluate(config, workdir)
  results["wall_seconds_train_and_evaluate"] = time.perf_counter() - start
  keep = ("validation_knn", "validation_knn_cosine", "validation_linear_probe",
          "knn_train_test", "knn_train_test_cosine", "knn_seed", "linear_probe", "raw_pixels",
          "train_seconds", "images_per_second", "first_call_seconds", "steps", "steps_per_call",
          "params_sha256", "wall_seconds_train_and_evaluate", "final_loss")
  return {k: results[k] for k in keep if k in results}


def check_default_run_twice(args):
  """Section 3: `check_default_run` in a fresh process twice, with one cache directory:
  cold (it compiles and writes every program, and computes the raw pixels' and the
  random initialisation's metrics), then warm (it loads them all). Each run's seconds
  from the parent include the process's start (imports, device set-up)."""
  cache_dir = os.path.join(args.out, "cache")
  shutil.rmtree(cache_dir, ignore_errors=True)  # cold means cold, also on a second try
  # This process holds the accelerator already: the children allocate as they go instead
  # of taking 75% of what is left.
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  runs = {}
  for name in ("cold_cache", "warm_cache"):
    out = os.path.join(args.out, name)
    shutil.rmtree(out, ignore_errors=True)  # no earlier report.json or workdir to resume
    start = time.perf_counter()
    try:
      subprocess.run([sys.executable, os.path.abspath(__file__), "--idx_dir", args.idx_dir,
                      "--out", out, "--sections", "run_once", "--config", args.config,
                      "--cache_dir", cache_dir]
                     + [f"--run_override={o}" for o in args.run_override], check=False,
                     env=env, timeout=300)  # a hung child must not take the device's budget
      with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        runs[name] = json.load(f).get("run_once") or {}
    except subprocess.TimeoutExpired:
      runs[name] = {"error": "timed out after 300 s"}
    runs[name]["process_seconds"] = time.perf_counter() - start
    print(f"  {name}: {runs[name].get('process_seconds', 0):.1f} s in all, "
          f"{runs[name].get('wall_seconds_train_and_evaluate', float('nan')):.1f} s train + "
          "evaluate", flush=True)
  return runs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--idx_dir", required=True, help="folder with the four MNIST IDX files")
  parser.add_argument("--out", required=True, help="folder for report.json and workdirs")
  parser.add_argument("--sections",
                      default="kernels,precision,run,steps_per_call,throughput,stream")
  parser.add_argument("--config", default="mnist", help="config of the end-to-end run")
  parser.add_argument("--quick", action="store_true", help="a small throughput grid")
  parser.add_argument("--run_override", action="append", default=[],
                      help="FIELD=VALUE (a Python literal) for section 3's run, repeatable: "
                      "e.g. max_steps=100 for a quick look")
  parser.add_argument("--cache_dir", default="", help=argparse.SUPPRESS)  # run_once's
  parser.add_argument("--ablations", default="", help="comma-separated names of section 7's "
                      "runs (default: all)")
  args = parser.parse_args()
  args.ablations = [n for n in args.ablations.split(",") if n]
  os.makedirs(args.out, exist_ok=True)

  from cl_jax import config_validation, data  # pylint: disable=g-import-not-at-top
  from cl_jax.data import records  # pylint: disable=g-import-not-at-top
  data.load_split = idx_loader(args.idx_dir)
  data.load_for = lambda config, split, data_dir, max_examples=-1: data.load_split(
      config.dataset, split, data_dir, max_examples)
  records.load_for = lambda config, split, data_dir: record_split(
      data.load_for(config, split, data_dir))
  config_validation.check_dataset = lambda config: None  # TFDS may be absent; MNIST is known
  data.dataset_info = mnist_info  # the evaluation's t-SNE legend reads it
  report = {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [f"{d.device_kind} ({d.platform})" for d in jax.devices()]}
  print(json.dumps(report), flush=True)
  train = data.load_split("mnist", "train")
  sections = {"kernels": lambda: check_kernels(train), "precision": check_precision,
              "throughput": lambda: check_throughput(args.quick),
              "steps_per_call": lambda: check_steps_per_call(args.out),
              "stream": lambda: check_streaming(args.out, args.quick),
              "drift": lambda: check_drift(train),
              "ablations": lambda: check_ablations(args.out, train, args.ablations),
              "run": lambda: check_default_run_twice(args),
              "run_once": lambda: check_default_run(args.out, args.config, args.cache_dir,
                                                    args.run_override)}
  for name in args.sections.split(","):
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    try:
      report[name] = sections[name]()
    except Exception:  # pylint: disable=broad-except  (report and go on to the next section)
      report[name] = {"error": traceback.format_exc()[-3000:]}
    report[f"{name}_seconds"] = time.perf_counter() - start
    if name != "throughput":
      print(json.dumps(report[name], indent=1, default=str)[:4000], flush=True)
    with open(os.path.join(args.out, "report.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
  main()
