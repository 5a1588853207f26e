"""cl_jax.config_validation and the entry point's handling of bad input (exit 2, one line)."""

import os
import subprocess
import sys
import threading

import pytest

from cl_jax import config_files
from cl_jax import config_validation
from cl_jax import default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (override, expected message). The same table is in docs/reliability.md.
BAD_INPUTS = [
    ({"batch_size": 0}, "config.batch_size=0: must be a positive integer"),
    ({"batch_size": -8}, "config.batch_size=-8: must be a positive integer"),
    ({"batch_size": 100}, "config.batch_size=100: must divide by the number of devices (8)"),
    ({"temperature": 0.0}, "config.temperature=0.0: must be > 0"),
    ({"temperature": -0.5}, "config.temperature=-0.5: must be > 0"),
    ({"learning_rate": 0.0}, "config.learning_rate=0.0: must be > 0"),
    ({"num_epochs": -1}, "config.num_epochs=-1: must be a positive integer"),
    # 0 epochs trained nothing and ended in a traceback at the final evaluation.
    ({"num_epochs": 0}, "config.num_epochs=0: must be a positive integer"),
    ({"augment.crop_ratio": (0.0, 1.0)}, "config.augment.crop_ratio=(0.0, 1.0): need 0 < min <= max"),
    ({"augment.crop_ratio": (1.5, 0.5)}, "config.augment.crop_ratio=(1.5, 0.5): need 0 < min <= max"),
    ({"augment.shear_degrees": 90.0}, "config.augment.shear_degrees=90.0: must be in [0, 90)"),
    ({"augment.elastic_grid": 0}, "config.augment.elastic_grid=0: must be a positive integer"),
    ({"augment.brightness": -0.2}, "config.augment.brightness=-0.2: must be >= 0"),
    ({"augment.contrast": -1.0}, "config.augment.contrast=-1.0: must be >= 0"),
    ({"augment.brightness": float("nan")}, "config.augment.brightness=nan: must be >= 0"),
    ({"augment.rotation_degrees": -1.0}, "config.augment.rotation_degrees=-1.0: must be >= 0"),
    ({"model.conv_features": (16, 0)},
     "config.model.conv_features=(16, 0): every width must be a positive integer"),
    ({"model.dense_features": 0}, "config.model.dense_features=0: must be a positive integer"),
    ({"model.projection_hidden": (-4,)},
     "config.model.projection_hidden=(-4,): every width must be a positive integer"),
    ({"model.projection_dim": -1}, "config.model.projection_dim=-1: must be 0 (no head) or positive"),
    ({"method": "moco", "queue_size": 0}, "config.queue_size=0: must be a positive integer"),
    ({"max_steps": 0}, "config.max_steps=0: must be -1 (no limit) or a positive integer"),
    ({"method": "barlow"},
     "config.method='barlow': allowed: simclr, moco, byol, supcon, triplet, margin, "
     "barlow_twins, vicreg, simsiam, mocov3, nnclr, dino, swav"),
    ({"method": "simsiam", "model.projection_dim": 0},
     "config.model.projection_dim=0: simsiam needs a projection head (> 0) for its predictor"),
    ({"model.predictor_hidden": (64,)},
     "config.model.predictor_hidden=(64,): simclr has no predictor"),
    ({"method": "dino", "model.prototypes": 0},
     "config.model.prototypes=0: dino needs a positive number of prototypes"),
    ({"method": "dino", "dino_teacher_temperature": (0.04, 0.0)},
     "config.dino_teacher_temperature=(0.04, 0.0): must be two positive temperatures"),
    ({"method": "dino", "dino_centre_momentum": 1.0},
     "config.dino_centre_momentum=1.0: must be in [0, 1)"),
    ({"method": "dino", "dino_freeze_prototypes_epochs": -1.0},
     "config.dino_freeze_prototypes_epochs=-1.0: must be >= 0"),
    ({"method": "swav", "swav_sinkhorn_epsilon": 0.0},
     "config.swav_sinkhorn_epsilon=0.0: must be positive"),
    ({"method": "swav", "swav_queue_size": -1},
     "config.swav_queue_size=-1: must be 0 (no queue) or a positive integer"),
    ({"augment.local_crops": 2},
     "config.augment.local_crops=2: simclr reads two views only (multi-crop: dino, swav)"),
    ({"method": "dino", "augment.local_crop_scale": (0.4, 0.05)},
     "config.augment.local_crop_scale=(0.4, 0.05): must be a pair (min, max) with "
     "0 < min <= max <= 1"),
    ({"method": "dino", "augment.local_crops": 2, "augment.local_crop_size": 12},
     "config.augment.local_crop_size=12: simple_cnn takes 28x28 images only: 0 (the images' "
     "size) or an encoder that pools (resnet18, resnet50)"),
    ({"method": "swav", "model.projection_dim": 0},
     "config.model.projection_dim=0: swav needs a projection head (> 0) before its prototypes"),
    ({"model.head_output_norm": "batch", "model.projection_dim": 0},
     "config.model.head_output_norm='batch': there is no head (projection_dim=0)"),
    ({"parallel": "pjit"}, "config.parallel='pjit': allowed: shard_map, pmap"),
    ({"dataset": "mnistt"},
     "config.dataset='mnistt': neither a registered TFDS dataset (e.g. mnist, cifar10) nor one "
     "prepared in data_dir (python -m cl_jax.data.import_folder)"),
    ({"knn_k": 20000}, "config.knn_k=20000: must be <= 10000 (monitor_bank_size)"),
    ({"monitor_bank_size": 3, "knn_k": 5}, "config.knn_k=5: must be <= 3 (monitor_bank_size)"),
    ({"optimizer": "lamb"}, "config.optimizer='lamb': allowed: adam, adamw, sgd, lars"),
    ({"model.encoder": "resnet34"}, "config.model.encoder='resnet34': allowed: simple_cnn, "
     "resnet18, resnet50, vit_tiny, vit_small"),
    ({"model.encoder": "resnet18", "model.kernels": "cpu"}, "config.model.kernels='cpu': the "
     "custom CPU kernels are simple_cnn's; resnet18 runs XLA's own (use auto or xla)"),
    ({"model.resnet_stem": "tiny"}, "config.model.resnet_stem='tiny': allowed: cifar, imagenet"),
    ({"model.encoder": "vit_tiny", "model.patch_size": 5},
     "config.model.patch_size=5: must divide the images' sides (28x28)"),
    ({"model.encoder": "vit_small", "model.width": 200},
     "config.model.width=200: must divide by its 3 attention heads (one per 64 of width)"),
    ({"model.width": 0}, "config.model.width=0: must be -1 (the named size's) or a positive integer"),
    ({"augment.flip_probability": 1.5},
     "config.augment.flip_probability=1.5: must be a probability in [0, 1]"),
    ({"augment.blur_probability": (0.5,)},
     "config.augment.blur_probability=(0.5,): must be a pair (view 1, view 2) of probabilities"),
    ({"augment.solarize_probability": (0.0, -0.2)}, "config.augment.solarize_probability=(0.0, "
     "-0.2): must be a pair (view 1, view 2) of probabilities"),
    ({"augment.hue": 0.6}, "config.augment.hue=0.6: must be at most 0.5 (a shift of half a turn)"),
    ({"augment.blur_sigma": (0.0, 2.0)}, "config.augment.blur_sigma=(0.0, 2.0): need 0 < min <= max"),
    ({"method": "supcon", "unlabelled_split": "unlabelled"}, "config.unlabelled_split="
     "'unlabelled': supcon reads labels; unlabelled images have none"),
    ({"image_size": -2}, "config.image_size=-2: must be 0 (keep) or a positive integer"),
    ({"lars_trust_coefficient": 0.0}, "config.lars_trust_coefficient=0.0: must be > 0"),
    ({"dataset": "imagenette"}, "config.image_size=0: imagenette's images have no one size: "
     "set it to resize them when loading"),
    ({"validation_examples": -1},
     "config.validation_examples=-1: must be 0 (no validation split) or a positive integer"),
    ({"validation_examples": 0},
     "config.validation_examples=0: the online monitor (eval_every_epochs > 0) queries the "
     "validation split; set eval_every_epochs=0 to run without one"),
    ({"dtype": "float16"}, "config.dtype='float16': allowed: float32, bfloat16"),
    ({"model.head_norm": "layer"}, "config.model.head_norm='layer': allowed: none, batch"),
    ({"model.bn_momentum": 1.0}, "config.model.bn_momentum=1.0: must be in [0, 1)"),
    ({"model.projection_dim": 0, "model.head_norm": "batch"},
     "config.model.head_norm='batch': there is no head (projection_dim=0)"),
    ({"model.predictor_norm": "batch"},
     "config.model.predictor_norm='batch': simclr has no predictor"),
    ({"method": "triplet", "triplet_mining": "hardest"},
     "config.triplet_mining='hardest': allowed: batch_hard, semi_hard, batch_all, soft_margin"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS)
def test_bad_values_are_named(overrides, message):
  config = default_config.get_config()
  for field, value in overrides.items():
    *parents, name = field.split(".")
    target = config
    for parent in parents:
      target = target[parent]
    target[name] = value
  with pytest.raises(config_validation.ConfigError) as info:
    config_validation.validate(config, 8, default_config.get_config())
  assert str(info.value) == message


def test_triplet_on_one_image_is_refused():
  """A global batch of 1 has no negatives (semi-hard's loss was inf); on 1 device."""
  config = default_config.get_config()
  config.method, config.batch_size = "triplet", 1
  with pytest.raises(config_validation.ConfigError) as info:
    config_validation.validate(config, 1, default_config.get_config())
  assert str(info.value) == "config.batch_size=1: triplet needs 2 or more images (negatives)"


def test_unknown_method_is_refused_without_validation():
  """The library called directly (no validate) must not fall through to NT-Xent."""
  from cl_jax import models  # pylint: disable=g-import-not-at-top
  config = default_config.get_config()
  config.method = "barlow"
  with pytest.raises(ValueError, match="config.method='barlow'"):
    models.create_model(config)


@pytest.mark.parametrize("overrides,message", [
    ({"parallel": "pmap"}, "config.parallel='pmap': several processes need shard_map"),
    ({"num_devices": 2}, "config.num_devices=2: several processes use every device: need -1"),
])
def test_multiprocess_limits_are_named(overrides, message):
  config = default_config.get_config()
  config.update(overrides)
  config_validation.validate(config, 8, default_config.get_config())  # fine in one process
  with pytest.raises(config_validation.ConfigError) as info:
    config_validation.validate(config, 8, default_config.get_config(), num_processes=2)
  assert str(info.value) == message


def test_unknown_keys_are_refused():
  config = default_config.get_config()
  config.augment.shear = 0.3
  config.lr = 1.0
  with pytest.raises(config_validation.ConfigError, match="unknown config keys: augment.shear, lr"):
    config_validation.validate(config, 1, default_config.get_config())


def test_defaults_are_valid():
  config_validation.validate(default_config.get_config(), 8, default_config.get_config())


@pytest.mark.parametrize("name", sorted(
    f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if not f.startswith("_")
    and f.endswith(".py")))
def test_every_config_file_is_valid(name):
  """Each file in configs/ loads and passes validation (a misspelt field is refused)."""
  config = config_files.load(os.path.join(ROOT, "configs", f"{name}.py")).get_config()
  config_validation.validate(config, 8, default_config.get_config())


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(config_validation.ConfigError, match="--workdir=.*cannot be written"):
    config_validation.check_workdir(str(blocker / "run"))


def test_processes_check_one_workdir_at_once(tmp_path):
  # Every process of a multi-host run checks the same workdir at start-up. A
  # probe file shared between them lets one process delete it under another
  # (seen in CI: "cannot be written (No such file or directory)"). Threads
  # stand in for the processes; 8 x 300 checks collided every time on the old code.
  errors = []

  def check_many():
    try:
      for _ in range(300):
        config_validation.check_workdir(str(tmp_path / "run"))
    except config_validation.ConfigError as e:
      errors.append(str(e))

  threads = [threading.Thread(target=check_many) for _ in range(8)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert errors == []
  assert os.listdir(tmp_path / "run") == []


@pytest.mark.parametrize("args,message", [
    (["--config.temperature=-1"], "error: config.temperature=-1.0: must be > 0"),
    (["--config.lr=1"], "error: unknown config key"),
    (["--config.batch_size=abc"], "error: flag --config.batch_size=abc"),
])
def test_command_line_exits_2_with_one_line(tmp_path, args, message):
  proc = subprocess.run(
      [sys.executable, "-m", "cl_jax.train", "--config", "configs/mnist.py", "--workdir",
       str(tmp_path / "w")] + args, capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(message), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
