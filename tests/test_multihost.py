"""cl_jax.multihost: 2 processes x 2 CPU devices (jax.distributed on localhost, Gloo) against
1 process x 4 devices, through the command line with the default evaluation settings (the
online monitor and the end-of-run evaluation on), with a preemption in the middle; then
`python -m cl_jax.evaluate` under 2 processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cl_jax import checkpointing
from cl_jax import models
from cl_jax import multihost
from cl_jax import train_step as train_step_lib
from cl_jax import trainer
from cl_jax.evaluator import read_metrics
from tests.test_trainer import quick_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One epoch of 8 steps, so the online monitor runs (at step 8); evaluation fits its k-NN
# on 4,096 training images instead of 60,000 (a size, not another code path). Past ~10
# steps the rounding differences below grow to 1e-3 in the loss (seen once: steps 12-16).
OVERRIDES = dict(max_train_examples=512, batch_size=64, num_epochs=1, log_every_steps=1,
                 checkpoint_every_steps=4, optimizer="sgd", learning_rate=0.01,
                 eval_train_examples=4096)
STEPS = 8
# Gloo's all-reduce sums in another order than XLA's in-process one: last-bit
# differences from step 1 on, which training amplifies (a near-tie in a max-pool
# window or a ReLU input near 0 that flips sends a whole gradient term elsewhere).
# The first loss comes from the initial parameters and must agree. A fault in
# what a step computes moves the loss far beyond these tolerances (negatives not
# spanning the global batch: ln 31 = 3.43 instead of ln 127 = 4.84 at uniform
# similarities). Seen in two runs (the same both times): losses equal for steps
# 1-3, at most 4.8e-7 apart after; parameters 1.5e-6 apart at step 8.
FIRST_LOSS_TOLERANCE = 1e-6
LOSS_TOLERANCE = 1e-5
PARAMS_TOLERANCE = 1e-4


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def port_is_free(port):
  with socket.socket() as s:
    try:
      s.bind(("localhost", port))
      return True
    except OSError:
      return False


def launch(command, log_prefix, cache_dir):
  """Starts `command` as the two processes of one cluster; returns [(Popen, stderr log path)]."""
  port = free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", CL_JAX_CACHE=cache_dir)
  launched = []
  for process_id in range(2):
    log = f"{log_prefix}.{process_id}.log"
    with open(log, "w", encoding="utf-8") as stderr:  # a file: a full pipe would stall it
      launched.append((subprocess.Popen(
          [sys.executable, "-m", *command, f"--coordinator_address=localhost:{port}",
           "--num_processes=2", f"--process_id={process_id}"],
          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr), log))
  return launched


def train_command(data_dir, workdir):
  """The README's command with the default evaluation settings."""
  return ["cl_jax.train", "--config", "configs/mnist_seed.py", "--workdir", workdir,
          f"--config.data_dir={data_dir}", "--config.progress_bar=False",
          *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]]


def finish(launched, timeout=600):
  """Waits for both processes; returns [(exit status, stderr)]."""
  finished = []
  try:
    for process, _ in launched:
      process.wait(timeout=timeout)
  finally:  # a hang must not leave processes behind for the tests that follow
    for process, _ in launched:
      if process.poll() is None:
        process.kill()
  for process, log in launched:
    with open(log, encoding="utf-8") as f:
      finished.append((process.returncode, f.read()))
  return finished


def preempt_process_1(command, workdir, log_prefix, cache_dir):
  """Launches `command` as two processes and sends SIGTERM to process 1 only, once both
  joined the cluster (process 0 writes WORKDIR/config.json after a barrier) and before the
  first step's compilation ends; both must exit as preempted. Returns the step each saved."""
  launched = launch(command, log_prefix, cache_dir)
  config_json = os.path.join(workdir, "config.json")
  deadline = time.time() + 200
  while time.time() < deadline and not os.path.exists(config_json):
    time.sleep(0.01)
  launched[1][0].send_signal(signal.SIGTERM)
  stopped = []
  for status, stderr in finish(launched):
    assert status == 128 + signal.SIGTERM, stderr[-3000:]
    stopped.append(int(stderr.split("saved a checkpoint at step ")[1].split(";")[0]))
  return stopped


@pytest.mark.long  # ~3 min: four training processes, two evaluations and a reference run
def test_two_processes_match_one_process_stop_together_and_evaluate(mnist_data_dir, tmp_path):
  cache = str(tmp_path / "cache")
  workdir = str(tmp_path / "two_processes")
  stopped = preempt_process_1(train_command(mnist_data_dir, workdir), workdir,
                              str(tmp_path / "first"), cache)
  assert stopped[0] == stopped[1] < STEPS, stopped  # the same step on both
  # Both processes re-run the same command: they resume, finish, and evaluate (the
  # end-of-run evaluation once hung here: process 0 alone opened Orbax's manager).
  for status, stderr in finish(launch(train_command(mnist_data_dir, workdir),
                                      str(tmp_path / "resumed"), cache)):
    assert status == 0, stderr[-3000:]

  reference_dir = str(tmp_path / "one_process")
  reference = trainer.train_and_evaluate(
      quick_config(mnist_data_dir, num_devices=4, **OVERRIDES), reference_dir)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert results["num_devices"] == reference["num_devices"] == 4
  assert results["resumed_from_step"] == stopped[0]
  assert results["eval_step"] == STEPS and 0.5 < results["knn_train_test"] <= 1
  assert all(os.path.exists(os.path.join(workdir, name))
             for name in ("report.md", "tsne.png", "knn.png", "loss.png"))
  # One writer: every logged step appears once (process 1 writes no metrics), and
  # process 0's online monitor ran at the end of the epoch.
  logged = read_metrics(workdir)
  expected = read_metrics(reference_dir)
  losses = [m for m in logged if "loss" in m]
  assert [m["step"] for m in losses] == [m["step"] for m in expected] == list(
      range(1, STEPS + 1))
  assert [m["step"] for m in logged if "knn_monitor" in m] == [STEPS]
  losses = np.array([m["loss"] for m in losses])
  expected_losses = np.array([m["loss"] for m in expected])
  assert abs(losses[0] - expected_losses[0]) <= FIRST_LOSS_TOLERANCE
  np.testing.assert_allclose(losses, expected_losses, rtol=0, atol=LOSS_TOLERANCE)
  params = checkpointing.Checkpointer(workdir).restore_tree(STEPS)["params"]
  reference_params = checkpointing.Checkpointer(reference_dir).restore_tree(STEPS)["params"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=PARAMS_TOLERANCE),
               params, reference_params)

  # The evaluation entry point under two processes recomputes the same metrics.
  os.remove(os.path.join(workdir, "report.md"))
  for status, stderr in finish(launch(["cl_jax.evaluate", "--workdir", workdir],
                                      str(tmp_path / "evaluate"), cache)):
    assert status == 0, stderr[-3000:]
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    again = json.load(f)
  assert os.path.exists(os.path.join(workdir, "report.md"))
  for key in ("knn_seed", "knn_train_test", "knn_train_test_cosine", "linear_probe"):
    assert again[key] == pytest.approx(results[key], abs=1e-6), key


@pytest.mark.slow  # ~30 s: two processes start, restore and stop
def test_a_failed_evaluation_on_process_0_stops_every_process(tmp_path):
  """Process 0 alone computes the evaluation while the others wait. When it fails (here:
  its data directory does not exist), every process must exit with an error, not wait
  for hours at a barrier process 0 never reaches (seen: process 1 waited 40 minutes)."""
  workdir = str(tmp_path / "run")
  config = quick_config(str(tmp_path / "no_data_here"), data_download=False)
  model = models.create_model(config)
  state = train_step_lib.create_train_state(
      model, train_step_lib.create_optimizer(config, 1, 1), jax.random.key(0), (28, 28, 1),
      config)
  checkpointer = checkpointing.Checkpointer(workdir)
  # Host arrays, as the trainer saves them (device arrays would record this process's devices).
  checkpointer.save(1, checkpointing.state_to_tree(jax.device_get(state), jax.random.key(1), 1))
  checkpointer.wait()
  checkpointer.close()
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json())
  start = time.time()
  finished = finish(launch(["cl_jax.evaluate", "--workdir", workdir], str(tmp_path / "evaluate"),
                           str(tmp_path / "cache")), timeout=300)
  assert time.time() - start < 300
  for status, stderr in finished:
    assert status != 0, stderr[-3000:]
  assert "no_data_here" in finished[0][1][-5000:]
  assert "process 0 failed in evaluation" in finished[1][1][-5000:], finished[1][1][-3000:]


# Batch norm in the encoder, the head and BYOL's predictor: statistics over the global batch
# of both processes. Evaluation off: this test is about the collectives of a training step.
BN_OVERRIDES = {**OVERRIDES, "method": "byol", "model.norm": "batch",
                "model.head_norm": "batch", "model.predictor_norm": "batch",
                "evaluate_at_end": False, "eval_every_epochs": 0}
# Both runs take the accelerators' default, a loop of steps on device (4 steps a call,
# one log line a call).
LOOP_OVERRIDES = {"steps_per_call": 4, "log_every_steps": 4}
# Gloo's order of summation, through BN's statistics, reached 2.4e-5 in the loss at step 8
# on an AVX-512 Xeon (2026-12-01) and 1.6e-4 on an AMD EPYC (2026-12-02, the same at
# ce5179d); statistics over one process's shard instead of the global batch change the
# first logged loss (step 4, FIRST_LOSS_TOLERANCE) already, by far more.
BN_LOSS_TOLERANCE = 5e-4
# The same rounding, through Adam's division by a tiny second moment, moved one channel of
# the first conv's kernel by 3.5e-4 there (8 steps of lr 1e-3 move a weight by up to 8e-3):
# two steps' worth.
BN_PARAMS_TOLERANCE = 2e-3


@pytest.mark.long  # ~2 min: two training processes and a reference run
def test_batch_norm_statistics_span_processes(mnist_data_dir, tmp_path):
  """2 processes x 2 devices equal 1 process x 4 devices, both 4 steps per call, with
  BatchNorm everywhere: losses, parameters, the running averages of the online and the
  target network. (The same loop on both sides: on some CPUs the loop's program rounds
  the first update differently from single steps in the last bit, tests/test_trainer.py,
  which BN and 8 steps grew to 1.3e-4 in the loss on an AVX-512 Xeon.)"""
  workdir = str(tmp_path / "two_processes")
  command = ["cl_jax.train", "--config", "configs/mnist_seed.py", "--workdir", workdir,
             f"--config.data_dir={mnist_data_dir}", "--config.progress_bar=False",
             *[f"--config.{k}={v}" for k, v in {**BN_OVERRIDES, **LOOP_OVERRIDES}.items()]]
  for status, stderr in finish(launch(command, str(tmp_path / "train"), str(tmp_path / "c"))):
    assert status == 0, stderr[-3000:]
  reference_dir = str(tmp_path / "one_process")
  config = quick_config(mnist_data_dir, num_devices=4)
  config.update_from_flattened_dict({**BN_OVERRIDES, **LOOP_OVERRIDES})
  trainer.train_and_evaluate(config, reference_dir)
  losses = [m["loss"] for m in read_metrics(workdir) if "loss" in m]
  expected = [m["loss"] for m in read_metrics(reference_dir) if "loss" in m]
  assert len(losses) == len(expected) == STEPS // 4  # steps 4 and 8
  np.testing.assert_allclose(losses[0], expected[0], rtol=0, atol=FIRST_LOSS_TOLERANCE)
  np.testing.assert_allclose(losses, expected, rtol=0, atol=BN_LOSS_TOLERANCE)
  tree = checkpointing.Checkpointer(workdir).restore_tree(STEPS)
  reference_tree = checkpointing.Checkpointer(reference_dir).restore_tree(STEPS)
  for name in ("params", "batch_stats", "momentum_params", "momentum_batch_stats"):
    jax.tree.map(lambda a, b, name=name: np.testing.assert_allclose(
        a, b, rtol=0, atol=BN_PARAMS_TOLERANCE, err_msg=name), tree[name], reference_tree[name])


@pytest.mark.parametrize("flag,environ,expected", [
    # srun --gpus-per-task=1: each task sees its one GPU (as "3" without cgroups, "0" with);
    # JAX's own rule would ask for ordinal SLURM_LOCALID = 3, which does not exist there.
    ("", {"SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "3"}, [0]),
    ("", {"SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "0"}, [0]),
    ("", {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "HIP_VISIBLE_DEVICES": "1"}, [0]),
    # Every GPU visible to every task: JAX's default (the local rank) is right.
    ("", {"SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, None),
    ("", {"SLURM_LOCALID": "3"}, None),
    # No GPU for this task: nothing to choose.
    ("", {"SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": ""}, None),
    ("", {"SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "-1"}, None),
    ("", {"SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),
    # --gpus-per-task=2: local rank 3 sees two GPUs of its own; JAX's [3] is out of range.
    ("", {"SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "6,7"}, []),
    # The user's JAX_LOCAL_DEVICE_IDS is JAX's to read (only while we pass None).
    ("", {"SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "3", "JAX_LOCAL_DEVICE_IDS": "0"},
     None),
    ("all", {"SLURM_LOCALID": "0", "CUDA_VISIBLE_DEVICES": "0"}, []),
    ("1,2", {}, [1, 2]),
])
def test_local_device_ids(flag, environ, expected):
  assert multihost.local_device_ids(flag, environ) == expected


def slurm_env(task, job_id, tmp_path):
  """What srun --ntasks=2 --gpus-per-task=1 sets for `task` on one host (each task's own
  GPU named by its index, as without cgroups), on 2 CPU devices per process."""
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
              JAX_PLATFORMS="cpu", CL_JAX_CACHE=str(tmp_path / "cache"),
              SLURM_JOB_ID=str(job_id), SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
              SLURM_PROCID=str(task), SLURM_LOCALID=str(task), CUDA_VISIBLE_DEVICES=str(task))


@pytest.mark.slow  # ~1 min: two short training processes, then two probes
def test_slurm_auto_detection_starts_one_cluster(mnist_data_dir, tmp_path):
  """--distributed with SLURM's variables (2 tasks on this host, each seeing its own
  'GPU' as srun --gpus-per-task=1 sets it) and nothing else: JAX's SLURM detection finds
  the coordinator, count and index, and the two processes train as one 4-device run."""
  # JAX derives the coordinator's port from the job id: id % 4096 + 61440; take a free one.
  job_id = next(port - 61440 for port in range(61440, 65536) if port_is_free(port))
  workdir = str(tmp_path / "slurm")
  command = [sys.executable, "-m", "cl_jax.train", "--config", "configs/mnist_seed.py",
             "--workdir", workdir, f"--config.data_dir={mnist_data_dir}",
             "--config.progress_bar=False", "--config.evaluate_at_end=False",
             "--config.eval_every_epochs=0", "--config.max_steps=4",
             *[f"--config.{k}={v}" for k, v in OVERRIDES.items()], "--distributed"]
  launched = []
  for task in range(2):
    log = str(tmp_path / f"task{task}.log")
    with open(log, "w", encoding="utf-8") as stderr:
      launched.append((subprocess.Popen(command, cwd=ROOT, env=slurm_env(task, job_id, tmp_path),
                                        stdout=subprocess.DEVNULL, stderr=stderr), log))
  for status, stderr in finish(launched):
    assert status == 0, stderr[-3000:]
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert results["num_devices"] == 4 and results["steps"] == 4

  # What each task asked JAX for: its only GPU, ordinal 0 (JAX's own rule: SLURM_LOCALID,
  # which on a GPU machine is an invalid ordinal for task 1; the CPU does not read it).
  probe = ("from absl import flags; from cl_jax import multihost; multihost.define_flags(); "
           "flags.FLAGS(['probe', '--distributed']); multihost.initialize_from_flags(); "
           "import jax; print(jax.process_index(), jax.process_count(), "
           "jax.config.read('jax_cuda_visible_devices'))")
  job_id = next(port - 61440 for port in range(61440, 65536) if port_is_free(port))
  probes = [subprocess.Popen([sys.executable, "-c", probe], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=slurm_env(task, job_id, tmp_path)) for task in range(2)]
  outputs = [p.communicate(timeout=120)[0].split() for p in probes]
  assert outputs == [["0", "2", "0"], ["1", "2", "0"]], outputs
