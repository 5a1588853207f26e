"""cl_jax.trainer end to end on real MNIST (imported offline from $MNIST_IDX_DIR)."""

import json
import math
import os

import jax
import numpy as np
import pytest

from cl_jax import checkpointing
from cl_jax import models
from cl_jax import train_step as train_step_lib
from cl_jax import trainer
from cl_jax.evaluator import read_metrics
from configs import mnist_seed


def quick_config(data_dir, **overrides):
  config = mnist_seed.get_config()
  config.data_dir = data_dir
  config.progress_bar = False
  config.evaluate_at_end = False  # evaluation has tests of its own (test_evaluator.py)
  config.eval_every_epochs = 0
  for name, value in overrides.items():
    config[name] = value
  return config


@pytest.mark.slow
def test_loss_goes_down_and_outputs_are_written(mnist_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = quick_config(mnist_data_dir, max_steps=300, batch_size=64, num_devices=2,
                        log_every_steps=25, checkpoint_every_steps=100)
  results = trainer.train_and_evaluate(config, workdir)
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == list(range(25, 301, 25))
  first, last = metrics[0]["loss"], metrics[-1]["loss"]
  chance = math.log(2 * 64 - 1)  # uniform similarities: 4.84
  # Seen here: 3.44 at step 25, 3.20 at step 300.
  assert last < first and last < chance - 1.2, (first, last)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved == results
  for key in ("final_loss", "steps", "epochs", "train_seconds", "images_per_second",
              "num_devices", "params_sha256"):
    assert key in results
  assert results["steps"] == 300 and results["num_devices"] == 2
  assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ["100", "200", "300"]
  assert any(name.startswith("events.out.tfevents")
             for name in os.listdir(os.path.join(workdir, "tensorboard")))


@pytest.mark.long  # ~25 s; shard_map resumes run in the default suite: with MoCo's
# state (test_methods.py) and after SIGTERM (test_reliability.py)
@pytest.mark.parametrize("parallel,num_devices", [("pmap", 2)])
def test_resume_matches_uninterrupted_run(mnist_data_dir, tmp_path, parallel, num_devices):
  overrides = dict(max_train_examples=1024, batch_size=64, num_epochs=3, log_every_steps=8,
                   checkpoint_every_steps=16, parallel=parallel, num_devices=num_devices)
  straight = trainer.train_and_evaluate(quick_config(mnist_data_dir, **overrides),
                                        str(tmp_path / "straight"))
  # 48 steps in all; stop after 20 (last checkpoint at 16 is not used: 20 is
  # checkpointed as the run's end), then re-run the full command.
  resumed_dir = str(tmp_path / "resumed")
  trainer.train_and_evaluate(quick_config(mnist_data_dir, max_steps=20, **overrides), resumed_dir)
  resumed = trainer.train_and_evaluate(quick_config(mnist_data_dir, **overrides), resumed_dir)
  assert resumed["resumed_from_step"] == 20 and resumed["steps"] == straight["steps"] == 48
  assert resumed["params_sha256"] == straight["params_sha256"]  # bit for bit
  # The resumed log keeps the first run's entries up to step 20 (20 itself is
  # extra: the stopped run logged its last step); every shared step agrees exactly.
  straight_losses = {m["step"]: m["loss"] for m in read_metrics(str(tmp_path / "straight"))}
  resumed_losses = {m["step"]: m["loss"] for m in read_metrics(resumed_dir)}
  assert set(resumed_losses) == set(straight_losses) | {20}
  assert all(resumed_losses[step] == loss for step, loss in straight_losses.items())


@pytest.mark.slow
def test_stopped_with_max_steps_then_resumed_equals_uninterrupted_under_cosine(mnist_data_dir,
                                                                                tmp_path):
  """max_steps says where to stop, not how long the schedule is: the cosine decay (with
  warm-up) of a run stopped at step 12 and resumed without max_steps is the full run's."""
  overrides = dict(max_train_examples=1024, batch_size=64, num_epochs=2, log_every_steps=4,
                   checkpoint_every_steps=8, num_devices=2, lr_schedule="cosine",
                   warmup_epochs=0.5)
  straight = trainer.train_and_evaluate(quick_config(mnist_data_dir, **overrides),
                                        str(tmp_path / "straight"))
  workdir = str(tmp_path / "stopped")
  stopped = trainer.train_and_evaluate(quick_config(mnist_data_dir, max_steps=12, **overrides),
                                       workdir)
  assert stopped["steps"] == 12 and stopped["schedule_steps"] == straight["schedule_steps"] == 32
  resumed = trainer.train_and_evaluate(quick_config(mnist_data_dir, **overrides), workdir)
  assert resumed["resumed_from_step"] == 12 and resumed["steps"] == 32
  assert resumed["params_sha256"] == straight["params_sha256"]  # bit for bit


@pytest.mark.long  # ~1 min
def test_forced_resume_keeps_the_checkpoints_schedule(mnist_data_dir, tmp_path):
  """Under resume=force a changed num_epochs does not stretch a schedule already under way:
  the run continues the saved 32-step schedule."""
  overrides = dict(max_train_examples=1024, batch_size=64, log_every_steps=4,
                   checkpoint_every_steps=8, num_devices=2, lr_schedule="cosine")
  straight = trainer.train_and_evaluate(quick_config(mnist_data_dir, num_epochs=2, **overrides),
                                        str(tmp_path / "straight"))
  workdir = str(tmp_path / "forced")
  trainer.train_and_evaluate(quick_config(mnist_data_dir, num_epochs=2, max_steps=8,
                                          **overrides), workdir)
  forced = trainer.train_and_evaluate(
      quick_config(mnist_data_dir, num_epochs=5, resume="force", **overrides), workdir)
  assert forced["schedule_steps"] == 32 and forced["steps"] == 32
  assert forced["params_sha256"] == straight["params_sha256"]


def test_calls_split_the_run_into_few_static_trip_counts():
  """MNIST's epoch (468 steps of 128) against logs every 50 and a monitor every epoch: each
  call stops at every boundary, runs 50 steps or a power of two, and the counts that occur
  over 20 epochs are at most 1 + log2(50) programs."""
  training = trainer.OnDeviceTraining.__new__(trainer.OnDeviceTraining)
  training.steps_per_epoch, training.steps_per_call = 468, 50
  boundaries = [50, 1000, 468]
  step, counts = 0, []
  while step < 20 * 468:
    count = training.steps_this_call(step, 20 * 468, boundaries)
    for every in [468, *boundaries]:  # never crosses one
      assert (step + count - 1) // every == step // every or (step + count) % every == 0
    assert count == 50 or count & (count - 1) == 0, count
    counts.append(count)
    step += count
  assert step == 20 * 468
  assert len(set(counts)) <= 1 + int(math.log2(50)), sorted(set(counts))
  assert 50 in counts and len(counts) < 20 * 468 / 50 * 1.5  # mostly full calls


def test_the_on_device_loop_has_a_static_trip_count():
  """The compiled loop carries XLA's known trip count (a traced count compiles a while loop
  without one, which the GPU runs by copying its predicate to the host every iteration)."""
  config = quick_config("", batch_size=16, steps_per_call=4)
  images = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
  training = trainer.OnDeviceTraining(config, jax.devices()[:2], images,
                                      np.zeros(64, np.int32), 8, steps_per_call=4)
  model = models.create_model(config)
  state = training.dp.put_state(train_step_lib.create_train_state(
      model, train_step_lib.create_optimizer(config, 4, 8), jax.random.key(0), (28, 28, 1)))
  permutation = train_step_lib.epoch_permutation(jax.random.key(1), 0, 64)
  for count in (4, 2):
    compiled = training._run.lower(  # pylint: disable=protected-access
        state, training.data, permutation, np.int32(0), count, jax.random.key(2)).compile()
    assert f'"known_trip_count":{{"n":"{count}"}}' in compiled.as_text(), count


def test_automatic_steps_per_call_is_one_step_on_cpu_only():
  """On CPU the on-device loop made training 1.8x slower (docs/performance.md); elsewhere it
  saves a dispatch per step. An explicit value is kept everywhere."""
  config = mnist_seed.get_config()
  assert config.steps_per_call == 0 and config.log_every_steps == 50
  assert trainer.resolve_steps_per_call(config, 468, "cpu") == 1
  assert trainer.resolve_steps_per_call(config, 468, "gpu") == 50
  assert trainer.resolve_steps_per_call(config, 20, "tpu") == 20  # at most an epoch
  config.steps_per_call = 7
  assert trainer.resolve_steps_per_call(config, 468, "cpu") == 7


@pytest.mark.slow
def test_steps_per_call_does_not_change_the_run(mnist_data_dir, tmp_path):
  """One step per jitted call and several (a loop on device, the automatic choice off the
  CPU) run the same steps, over epoch ends, logs and checkpoints that do not line up.

  The same to rounding, not bit for bit: XLA compiles the loop's body as another
  program, which rounds differently in the last bit, and training amplifies that: on
  this project's AMD EPYC (2026-12-02) the losses of the two runs agree to 1e-6 at step 5
  (the first call, a loop of 5) and drift apart to 1.4e-3 by step 25, with Adam and
  with SGD alike, and even with identity views (on an AVX-512 Xeon, 2026-12-01, they
  stayed within 1.4e-6 over 30 steps). A wrong batch or key moves a loss by a
  batch-to-batch difference, 1e-2 to 1e-1 here. Tolerances: the first call's loss 1e-5;
  the later ones 5e-3; the parameters within 1e-2 of their norm (all arrays together)."""
  overrides = dict(max_train_examples=1000, batch_size=64, num_epochs=2, log_every_steps=5,
                   checkpoint_every_steps=7, num_devices=2, lr_schedule="cosine")
  one = trainer.train_and_evaluate(quick_config(mnist_data_dir, steps_per_call=1, **overrides),
                                   str(tmp_path / "one"))
  many = trainer.train_and_evaluate(quick_config(mnist_data_dir, steps_per_call=5, **overrides),
                                    str(tmp_path / "many"))
  assert one["steps_per_call"] == 1 and many["steps_per_call"] == 5 and many["steps"] == 30
  logged = {name: read_metrics(str(tmp_path / name)) for name in ("one", "many")}
  assert [m["step"] for m in logged["one"]] == [m["step"] for m in logged["many"]]
  losses = {name: np.array([m["loss"] for m in logged[name]]) for name in logged}
  assert abs(losses["many"][0] - losses["one"][0]) <= 1e-5, losses
  np.testing.assert_allclose(losses["many"], losses["one"], rtol=0, atol=5e-3)
  params = {}
  for name in ("one", "many"):
    checkpointer = checkpointing.Checkpointer(str(tmp_path / name))
    params[name] = checkpointer.restore_tree(30)["params"]
    checkpointer.close()
  flat = {name: np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])
          for name, tree in params.items()}
  difference = np.linalg.norm(flat["many"] - flat["one"])
  assert difference <= 1e-2 * np.linalg.norm(flat["one"]), (difference,
                                                             np.linalg.norm(flat["one"]))
  assert sorted(os.listdir(checkpointing.checkpoint_dir(str(tmp_path / "many")))) == [
      "21", "28", "30"]  # every 7 steps and the last; Orbax keeps 3
