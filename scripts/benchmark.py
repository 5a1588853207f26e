"""Training throughput: cl_jax against a PyTorch reference (same model, loss, optimizer, views).

  python scripts/benchmark.py --batch_sizes 128,512 --repeats 3 --out bench.json
  python scripts/benchmark.py --workload cifar10 --batch_sizes 256,512 [--dtype bfloat16]

Each measurement runs in a fresh child process (so peak memory is its own),
alternating frameworks and batch sizes repetition by repetition. Workloads:
`mnist` (configs/mnist_seed.py: SimpleCNN on random uint8 28x28x1), `mnist_default`
(configs/mnist.py, the README's: the same with slanted and elastically distorted views,
t = 1.0; PyTorch keeps a constant learning rate, cl_jax its cosine: no work either way) and
`cifar10` (configs/cifar10.py: ResNet-18 with SimCLR's views and LARS on random
uint8 32x32x3, against the same recipe in PyTorch, channels-last); throughput does
not depend on pixel values. With --dtype bfloat16 (cl_jax's compute dtype) PyTorch runs
under bf16 autocast. PyTorch runs twice: `torch`, eager (one step per Python call, as
the replaced example and most PyTorch code are written), and `torch_fast`, what a
PyTorch user tuning for speed would add: `torch.compile` (CUDA graphs on a GPU) and,
for the MNIST workloads, channels-last and a fused Adam on a GPU
(`torch_reference.TorchTraining`). Its compile_seconds (the first step's time less a
steady step's) undercounts: CUDA graphs are recorded on later, warm-up steps.
An "image" is one dataset example, which gives two views; s/epoch is the projected
time of one pass over the dataset's training split (60,000 or 50,000). Prints a table and writes JSON. It is a benchmark, not a test: nothing
here passes or fails on time.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

# Per workload: the config file, the image shape, the training split's size.
WORKLOADS = {"mnist": ("mnist_seed", (28, 28, 1), 60000),
             "mnist_default": ("mnist", (28, 28, 1), 60000),
             "cifar10": ("cifar10", (32, 32, 3), 50000)}
# Published per-epoch times of SimCLR with ResNet-18 on CIFAR-10 (as issue 25 quotes them;
# not re-checked from here), printed beside the cifar10 table for scale.
PUBLISHED_CIFAR10 = [
    "lightly (docs, benchmarks): 800 epochs in 331 min on one RTX A6000, about 25 s an epoch",
    "dkobak/simclr-cifar10 (README): 11.9 s an epoch on one A100"]


def workload_config(workload):
  from cl_jax import config_files  # pylint: disable=g-import-not-at-top
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  name = WORKLOADS[workload][0]
  return config_files.load(os.path.join(repo_root, "configs", f"{name}.py")).get_config()


def measure_jax(batch_size, steps, warmup, parallel, dtype, steps_per_call=0, kernels="auto",
                workload="mnist"):
  """Times cl_jax's training loop on device: `steps` steps in calls of `steps_per_call`
  (0: the trainer's automatic choice), as the trainer runs them (no host sync between calls).
  Returns a dict of measurements."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cl_jax import models, trainer  # pylint: disable=g-import-not-at-top
  from cl_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top

  config = workload_config(workload)
  _, shape, num_images = WORKLOADS[workload]
  config.batch_size = batch_size
  config.parallel = parallel
  config.dtype = dtype
  config.steps_per_call = steps_per_call
  if config.model.encoder == "simple_cnn":
    config.model.kernels = kernels
  devices = jax.local_devices()
  images = np.random.default_rng(0).integers(0, 256, (num_images,) + shape, dtype=np.uint8)
  labels = np.zeros(num_images, np.int32)  # SimCLR does not read them
  steps_per_epoch = num_images // batch_size
  per_call = trainer.resolve_steps_per_call(config, steps_per_epoch, devices[0].platform)
  training = trainer.OnDeviceTraining(config, devices, images, labels, 10 * steps_per_epoch,
                                      per_call)
  model = models.create_model(config)
  tx = train_step_lib.create_optimizer(config, steps_per_epoch, 10 * steps_per_epoch)
  init_key, shuffle_key, augment_key = jax.random.split(jax.random.key(0), 3)
  state = training.dp.put_state(
      train_step_lib.create_train_state(model, tx, init_key, images.shape[1:]))

  def trip_counts(first, count):
    """The steps of each call that runs global steps first .. first + count - 1."""
    counts, step = [], first
    while step < first + count:
      counts.append(training.steps_this_call(step, first + count, []))
      step += counts[-1]
    return counts

  def run(state, first, count):
    step = first
    for n in trip_counts(first, count):
      state, metrics = training.run(state, step, n, shuffle_key, augment_key)
      step += n
    return state, {k: v[n - 1] for k, v in metrics.items()}

  start = time.perf_counter()
  state, metrics = run(state, 0, per_call)
  jax.block_until_ready(metrics)
  first_call = time.perf_counter() - start
  state, metrics = run(state, per_call, warmup)
  # Each trip count is a program of its own: compile those the timed steps need and the
  # warm-up did not, with one call each at the start of the timed steps' epoch.
  timed = per_call + warmup
  compiled = set(trip_counts(0, per_call)) | set(trip_counts(per_call, warmup))
  for n in sorted(set(trip_counts(timed, steps)) - compiled):
    state, metrics = training.run(state, timed // steps_per_epoch * steps_per_epoch, n,
                                  shuffle_key, augment_key)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  state, metrics = run(state, timed, steps)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  stats = devices[0].memory_stats() or {}
  return {"seconds_per_step": seconds / steps,
          "compile_seconds": first_call - per_call * seconds / steps, "steps_per_call": per_call,
          "kernels": (models.resolve_kernels(config.model.kernels)
                      if config.model.encoder == "simple_cnn" else "xla"), "dtype": dtype,
          "device": f"{devices[0].device_kind} x{len(devices)}",
          "peak_device_bytes": stats.get("peak_bytes_in_use"), "loss": float(metrics["loss"])}


def measure_torch(batch_size, steps, warmup, workload="mnist", fast=False, dtype="float32"):
  """Times the PyTorch reference's training step, eager or (`fast`) tuned; the first step's
  time less a steady step's is reported as compile_seconds."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_reference  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"
  if fast:  # each batch size compiles afresh, as in a run of its own (no dynamic shapes)
    torch.compiler.reset()
  _, (height, width, channels), num_images = WORKLOADS[workload]
  images = torch.randint(0, 256, (num_images, channels, height, width), dtype=torch.uint8)
  if workload == "cifar10":
    training = torch_reference.CifarTraining(images, batch_size, device, fast,
                                             bfloat16=dtype == "bfloat16")
  else:
    config = workload_config(workload)  # the same views, temperature and learning rate
    a = config.augment
    views = dict(scale=tuple(a.crop_scale), ratio=tuple(a.crop_ratio),
                 degrees=a.rotation_degrees, shear_degrees=a.shear_degrees,
                 elastic_alpha=a.elastic_alpha, elastic_grid=a.elastic_grid)
    training = torch_reference.TorchTraining(
        images, batch_size, device, lr=config.learning_rate, temperature=config.temperature,
        fast=fast, bfloat16=dtype == "bfloat16", views=views)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  start = time.perf_counter()
  loss = training.step(0)
  sync()
  first_step = time.perf_counter() - start
  for step in range(1, warmup + 1):
    loss = training.step(step)
  sync()
  start = time.perf_counter()
  for step in range(warmup + 1, warmup + 1 + steps):
    loss = training.step(step)
  sync()
  seconds = time.perf_counter() - start
  name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
  return {"seconds_per_step": seconds / steps, "compile_seconds": first_step - seconds / steps,
          "device": name, "loss": float(loss),
          "peak_device_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None}


def measure_overheads(repeats=3):
  """Seconds per call of the online k-NN monitor and of one checkpoint save (SimpleCNN)."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cl_jax import checkpointing, data, models, trainer  # pylint: disable=g-import-not-at-top
  from cl_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  from configs import mnist_seed  # pylint: disable=g-import-not-at-top

  config = mnist_seed.get_config()
  rng = np.random.default_rng(0)
  fake = lambda n: data.Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                              rng.integers(0, 10, n).astype(np.int32))
  model = models.create_model(config)
  state = train_step_lib.create_train_state(model, train_step_lib.create_optimizer(config, 1, 1),
                                            jax.random.key(0), (28, 28, 1))
  monitor = trainer.KnnMonitor(model, fake(config.monitor_bank_size),
                               fake(config.monitor_query_size), config, jax.local_devices())
  variables = train_step_lib.eval_variables(state)
  monitor.accuracies(variables)  # compile
  start = time.perf_counter()
  for _ in range(repeats):
    monitor.accuracies(variables)
  monitor_seconds = (time.perf_counter() - start) / repeats
  with tempfile.TemporaryDirectory() as workdir:
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=3)
    tree = checkpointing.state_to_tree(jax.device_get(state), jax.random.key(0), 1)
    start = time.perf_counter()
    for step in range(1, repeats + 1):
      checkpointer.save(step, tree)
      checkpointer.wait()
    checkpoint_seconds = (time.perf_counter() - start) / repeats
    checkpointer.close()
  return {"monitor_seconds": monitor_seconds, "checkpoint_seconds": checkpoint_seconds,
          "monitor_examples": config.monitor_bank_size + config.monitor_query_size}


def child(args):
  if args.framework == "overheads":
    print("RESULT " + json.dumps(measure_overheads()))
    return
  if args.framework == "cl_jax":
    result = measure_jax(args.batch_size, args.steps, args.warmup, args.parallel, args.dtype,
                         args.steps_per_call, args.kernels, args.workload)
  else:
    result = measure_torch(args.batch_size, args.steps, args.warmup, args.workload,
                           args.framework == "torch_fast", args.dtype)
  result["images_per_second"] = args.batch_size / result["seconds_per_step"]
  result["seconds_per_epoch"] = WORKLOADS[args.workload][2] / result["images_per_second"]
  # ru_maxrss is in KiB on Linux.
  result["peak_host_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print("RESULT " + json.dumps(result))


def run_child(framework, batch_size, args):
  command = [sys.executable, os.path.abspath(__file__), "--child", "--framework", framework,
             "--batch_size", str(batch_size), "--steps", str(args.steps), "--warmup",
             str(args.warmup), "--parallel", args.parallel, "--dtype", args.dtype,
             "--steps_per_call", str(args.steps_per_call), "--kernels", args.kernels,
             "--workload", args.workload]
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo_root)
  for line in out.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{framework} batch {batch_size} failed:\n{out.stderr[-3000:]}")


def median(values):
  values = sorted(values)
  return values[len(values) // 2]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_sizes", default="128,512", help="comma-separated global batches")
  parser.add_argument("--frameworks", default="cl_jax,torch,torch_fast",
                      help="comma-separated: cl_jax, torch (eager), torch_fast (compiled)")
  parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions")
  parser.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
  parser.add_argument("--warmup", type=int, default=50, help="untimed steps after the first call")
  parser.add_argument("--steps_per_call", type=int, default=0,
                      help="cl_jax steps per jitted call; 0 = the trainer's choice (1 on CPU, "
                      "elsewhere log_every_steps, at most an epoch), "
                      "1 = one dispatch per step")
  parser.add_argument("--kernels", default="auto", help="cl_jax config.model.kernels (mnist)")
  parser.add_argument("--workload", default="mnist", choices=sorted(WORKLOADS))
  parser.add_argument("--parallel", default="shard_map", choices=["shard_map", "pmap"])
  parser.add_argument("--dtype", default="float32",
                      help="compute dtype of cl_jax and of the PyTorch reference's autocast: "
                      "float32 or bfloat16")
  parser.add_argument("--out", default="", help="write all measurements here as JSON")
  parser.add_argument("--overheads", action="store_true",
                      help="also time the online k-NN monitor and a checkpoint save")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--framework", default="cl_jax", help=argparse.SUPPRESS)
  parser.add_argument("--batch_size", type=int, default=128, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return

  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  frameworks = args.frameworks.split(",")
  runs = {(f, b): [] for f in frameworks for b in batch_sizes}
  for repeat in range(args.repeats):
    for batch_size in batch_sizes:
      for framework in (frameworks if repeat % 2 == 0 else frameworks[::-1]):
        result = run_child(framework, batch_size, args)
        runs[(framework, batch_size)].append(result)
        print(f"repeat {repeat} {framework:7s} batch {batch_size:5d}: "
              f"{result['images_per_second']:9.0f} img/s", flush=True)

  summary = []
  for (framework, batch_size), results in runs.items():
    summary.append({
        "framework": framework, "batch_size": batch_size, "device": results[0]["device"],
        "images_per_second": median([r["images_per_second"] for r in results]),
        "images_per_second_all": [r["images_per_second"] for r in results],
        "seconds_per_epoch": median([r["seconds_per_epoch"] for r in results]),
        "compile_seconds": median([r["compile_seconds"] for r in results]),
        "peak_host_mib": max(r["peak_host_bytes"] for r in results) / 2**20,
        "peak_device_mib": (max(r["peak_device_bytes"] for r in results) / 2**20
                            if results[0]["peak_device_bytes"] else None)})
  print()
  print("| framework | batch | device | images/s (median) | s/epoch | compile s | "
        "peak host MiB | peak device MiB | cl_jax / torch | cl_jax / torch_fast |")
  print("| --- " * 10 + "|")
  speed = {(s["framework"], s["batch_size"]): s["images_per_second"] for s in summary}
  for s in summary:
    ratios = []
    for reference in ("torch", "torch_fast"):
      known = s["framework"] == "cl_jax" and (reference, s["batch_size"]) in speed
      ratios.append(f"{s['images_per_second'] / speed[(reference, s['batch_size'])]:.2f}x"
                    if known else "")
    device_mib = f"{s['peak_device_mib']:.0f}" if s["peak_device_mib"] else "-"
    print(f"| {s['framework']} | {s['batch_size']} | {s['device']} | "
          f"{s['images_per_second']:.0f} | {s['seconds_per_epoch']:.1f} | "
          f"{s['compile_seconds']:.1f} | {s['peak_host_mib']:.0f} | {device_mib} | "
          f"{' | '.join(ratios)} |")
  if args.workload == "cifar10":
    print("\npublished SimCLR ResNet-18 CIFAR-10 epochs, for scale (other machines):")
    for line in PUBLISHED_CIFAR10:
      print(f"  {line}")
  overheads = None
  if args.overheads:
    overheads = run_child("overheads", 0, args)
    print(f"\nonline k-NN monitor ({overheads['monitor_examples']} images embedded + k-NN): "
          f"{overheads['monitor_seconds']:.2f} s per call (once per epoch by default); "
          f"checkpoint save (synchronous wait): {overheads['checkpoint_seconds']:.3f} s")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                 "host": platform.node(), "cpu_count": os.cpu_count(),
                 "args": vars(args), "summary": summary, "overheads": overheads}, f, indent=2)


if __name__ == "__main__":
  main()
