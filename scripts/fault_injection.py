"""Kill -9 a training run at random moments, re-run it each time, and check that it
ends with the same parameters as an uninterrupted run.

  python scripts/fault_injection.py --kills 20 --data_dir TFDS_DIR [--workdir /tmp/fi]

Kills land at random points of training, including while an asynchronous
checkpoint is being written (checkpoints every 8 steps) and during start-up.
Reports how many kills the run survived (each restart resumed, the final
params_sha256 equals the reference). A CI-sized version runs in
tests/test_reliability.py.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corrupt_checkpoint(workdir, step, rng):
  """Truncates or deletes the largest data file of checkpoint `step` (a torn write)."""
  folder = os.path.join(workdir, "checkpoints", str(step))
  files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
  target = max(files, key=os.path.getsize)
  if rng.random() < 0.5:
    os.remove(target)
  else:
    with open(target, "r+b") as f:
      f.truncate(os.path.getsize(target) // 2)
  return target


def _logged_lines(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return sum(1 for _ in f)


def _params_sha256(workdir):
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)["params_sha256"]


def run_campaign(command, workdir, reference_command, reference_workdir, kills, seed, cwd,
                 max_logged_lines=8, timeout=600):
  """Runs `command` with `kills` kill -9s, then to the end; compares with the reference.

  `reference_command` is run first unless `reference_workdir` already holds its results.

  A kill is aimed after a random number (0..max_logged_lines) of metrics.jsonl
  lines plus a random delay of up to 0.3 s; a run that finished before it is
  simply run again. Returns a report dict.
  """
  rng = np.random.default_rng(seed)
  if not os.path.exists(os.path.join(reference_workdir, "results.json")):
    subprocess.run(reference_command, cwd=cwd, check=True, capture_output=True, timeout=timeout)
  survived = attempts = 0
  kill_points = []
  while survived < kills:
    attempts += 1
    wait_lines = int(rng.integers(0, max_logged_lines + 1))
    delay = float(rng.uniform(0, 0.3))
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    start_lines = _logged_lines(workdir)
    deadline = time.time() + timeout
    while (proc.poll() is None and time.time() < deadline
           and _logged_lines(workdir) < start_lines + wait_lines):
      time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:  # finished (or failed) before the kill
      if proc.returncode != 0:
        raise RuntimeError(f"run failed after {survived} kills:\n{proc.stderr.read()[-3000:]}")
      shutil.rmtree(workdir)  # start over so that there is something left to kill
      continue
    proc.kill()
    proc.wait()
    survived += 1
    kill_points.append({"after_lines": wait_lines, "delay_s": round(delay, 3)})
    print(f"kill {survived}/{kills}: {wait_lines} new log lines + {delay:.2f} s into attempt "
          f"{attempts}", flush=True)
  final = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
  if final.returncode != 0:
    raise RuntimeError(f"resume after {survived} kills failed:\n{final.stderr[-3000:]}")
  return {"kills": kills, "survived": survived, "attempts": attempts,
          "kill_points": kill_points, "params_sha256": _params_sha256(workdir),
          "reference_params_sha256": _params_sha256(reference_workdir),
          "same_params": _params_sha256(workdir) == _params_sha256(reference_workdir)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default="", help="TFDS data dir holding mnist")
  parser.add_argument("--workdir", default="/tmp/cl_jax_fault_injection")
  parser.add_argument("--steps", type=int, default=96, help="training steps of each run")
  args = parser.parse_args()

  shutil.rmtree(args.workdir, ignore_errors=True)
  def command(workdir):
    return [sys.executable, "-m", "cl_jax.train", "--config", "configs/mnist_seed.py",
            "--workdir", workdir, f"--config.data_dir={args.data_dir}",
            "--config.max_train_examples=4096", "--config.batch_size=64",
            f"--config.max_steps={args.steps}", "--config.log_every_steps=2",
            "--config.checkpoint_every_steps=8", "--config.num_devices=1",
            "--config.progress_bar=False", "--config.evaluate_at_end=False",
            "--config.eval_every_epochs=0"]
  run_dir, reference_dir = (os.path.join(args.workdir, n) for n in ("run", "reference"))
  report = run_campaign(command(run_dir), run_dir, command(reference_dir), reference_dir,
                        args.kills, args.seed, REPO_ROOT, max_logged_lines=args.steps // 2)
  print(json.dumps(report, indent=2))
  print(f"survived {report['survived']} of {report['kills']} kills; final parameters "
        f"{'equal' if report['same_params'] else 'DIFFER from'} the uninterrupted run's")
  sys.exit(0 if report["same_params"] else 1)


if __name__ == "__main__":
  main()
