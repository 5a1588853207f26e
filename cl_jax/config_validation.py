"""Checks a whole config before any compilation or data loading.

Each problem is reported as one line naming the field, the value given and
what is allowed; the entry points print it and exit with status 2.
"""

import os
import tempfile

from cl_jax import data
from cl_jax import encoders
from cl_jax import evaluation
from cl_jax import methods
from cl_jax import models
from cl_jax import parallel
from cl_jax import streaming

OPTIMIZERS = ("adam", "adamw", "sgd", "lars")
LR_SCHEDULES = ("constant", "cosine")
NORMS = ("none", "layer", "batch")
HEAD_NORMS = ("none", "batch")
DTYPES = ("float32", "bfloat16")
RESUME_MODES = ("auto", "force")
RESNET_STEMS = ("cifar", "imagenet")
MATMUL_PRECISIONS = ("default", "high", "highest")


class ConfigError(ValueError):
  """A config value that cannot work; the message is one line."""


def _flat_keys(config, prefix=""):
  keys = set()
  for name, value in config.items():
    keys.add(prefix + name)
    if hasattr(value, "items"):
      keys |= _flat_keys(value, f"{prefix}{name}.")
  return keys


def _fail(field, value, allowed):
  raise ConfigError(f"config.{field}={value!r}: {allowed}")


def _check_choice(config, field, choices):
  value = config
  for part in field.split("."):
    value = value[part]
  if value not in choices:
    _fail(field, value, f"allowed: {', '.join(choices)}")


def check_dataset(config):
  """config.dataset must be a registered TFDS dataset or one prepared in config.data_dir
  (import_folder); its images must have one size unless image_size resizes them, and a ViT's
  patches must tile them."""
  name = config.dataset
  try:
    info = data.dataset_info(name, config.data_dir or data.default_data_dir(),
                             config.image_size)
  except data.MixedSizesError as e:
    _fail("image_size", config.image_size, str(e))
  except Exception:  # pylint: disable=broad-except  (TFDS raises several kinds)
    _fail("dataset", name, "neither a registered TFDS dataset (e.g. mnist, cifar10) nor one "
          "prepared in data_dir (python -m cl_jax.data.import_folder)")
  height, width, _ = info.image_shape
  if encoders.get(config.model.encoder).uses_patches and (
      height % config.model.patch_size or width % config.model.patch_size):
    _fail("model.patch_size", config.model.patch_size,
          f"must divide the images' sides ({height}x{width})")
  local_size = config.augment.local_crop_size
  if (config.augment.local_crops and local_size and (local_size, local_size) != (height, width)
      and encoders.get(config.model.encoder).fixed_input_size):
    _fail("augment.local_crop_size", local_size,
          f"{config.model.encoder} takes {height}x{width} images only: 0 (the images' size) "
          "or an encoder that pools (resnet18, resnet50)")
  sizes = info.split_sizes  # known once the dataset is prepared
  if sizes:
    if info.test_split is None:
      _fail("dataset", name, f"has no test or validation split to report on (splits: "
            f"{', '.join(sorted(sizes))})")
    if config.unlabelled_split in ("train", info.test_split):
      _fail("unlabelled_split", config.unlabelled_split,
            "must be a split other than the training and test splits")
    if config.unlabelled_split and config.unlabelled_split not in sizes:
      _fail("unlabelled_split", config.unlabelled_split,
            f"{name} has no such split (splits: {', '.join(sorted(sizes))})")
    fit = evaluation.seed_protocol_fit(sizes[info.test_split])
    if config.evaluate_at_end and config.knn_k > fit:
      _fail("knn_k", config.knn_k, f"must be <= {fit} (the seed protocol's fit set: 80% of "
            f"the {sizes[info.test_split]} {info.test_split} images)")


def validate(config, num_devices, reference_config=None, num_processes=1):
  """Raises ConfigError for the first problem found in `config`.

  Args:
    config: the run config.
    num_devices: how many devices the run will use (all processes together).
    reference_config: the default config whose keys are the known ones.
    num_processes: how many JAX processes run it (jax.distributed).
  """
  if reference_config is not None:
    unknown = sorted(_flat_keys(config) - _flat_keys(reference_config))
    if unknown:
      raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
  _check_choice(config, "method", methods.METHODS)
  _check_choice(config, "parallel", parallel.MODES)
  _check_choice(config, "optimizer", OPTIMIZERS)
  _check_choice(config, "lr_schedule", LR_SCHEDULES)
  _check_choice(config, "model.norm", NORMS)
  _check_choice(config, "model.head_norm", HEAD_NORMS)
  _check_choice(config, "model.head_output_norm", HEAD_NORMS)
  _check_choice(config, "model.predictor_norm", HEAD_NORMS)
  _check_choice(config, "dtype", DTYPES)
  _check_choice(config, "resume", RESUME_MODES)
  _check_choice(config, "model.kernels", models.KERNELS)
  _check_choice(config, "model.encoder", encoders.ENCODERS)
  _check_choice(config, "model.resnet_stem", RESNET_STEMS)
  _check_choice(config, "matmul_precision", MATMUL_PRECISIONS)
  _check_choice(config, "data_placement", streaming.PLACEMENTS)
  if config.data_placement == "stream":
    if config.parallel != "shard_map":
      _fail("parallel", config.parallel, "the streamed path (data_placement='stream') needs "
            "shard_map")
    if config.steps_per_call > 1:
      _fail("steps_per_call", config.steps_per_call, "the streamed path "
            "(data_placement='stream') runs one step a call: need 0 or 1")
  for field in ("stream_read_threads", "stream_prefetch_steps"):
    if isinstance(config[field], bool) or not isinstance(config[field], int) or config[field] < 1:
      _fail(field, config[field], "must be a positive integer")
  if num_processes > 1:
    if config.parallel != "shard_map":
      _fail("parallel", config.parallel, "several processes need shard_map")
    if config.num_devices != -1:
      _fail("num_devices", config.num_devices, "several processes use every device: need -1")
  if not isinstance(config.batch_size, int) or config.batch_size <= 0:
    _fail("batch_size", config.batch_size, "must be a positive integer")
  if config.batch_size % num_devices:
    _fail("batch_size", config.batch_size,
          f"must divide by the number of devices ({num_devices})")
  for field in ("temperature", "learning_rate", "lars_trust_coefficient"):
    if not config[field] > 0:
      _fail(field, config[field], "must be > 0")
  if not isinstance(config.num_epochs, int) or config.num_epochs <= 0:
    _fail("num_epochs", config.num_epochs, "must be a positive integer")
  for field in ("weight_decay", "warmup_epochs", "eval_every_epochs", "steps_per_call",
                "online_probe_learning_rate"):
    if config[field] < 0:
      _fail(field, config[field], "must be >= 0")
  for field in ("max_steps", "max_train_examples", "eval_train_examples"):
    if config[field] != -1 and config[field] <= 0:
      _fail(field, config[field], "must be -1 (no limit) or a positive integer")
  for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                "eval_batch_size", "monitor_bank_size", "monitor_query_size"):
    if config[field] <= 0:
      _fail(field, config[field], "must be a positive integer")
  if not isinstance(config.validation_examples, int) or config.validation_examples < 0:
    _fail("validation_examples", config.validation_examples,
          "must be 0 (no validation split) or a positive integer")
  if config.validation_examples == 0 and config.eval_every_epochs > 0:
    _fail("validation_examples", 0, "the online monitor (eval_every_epochs > 0) queries the "
          "validation split; set eval_every_epochs=0 to run without one")
  methods.get(config.method).check_config(config, _fail)
  _check_augment(config.augment)
  _check_model(config.model)
  for field in ("head_norm", "head_output_norm"):
    if config.model[field] != "none" and config.model.projection_dim == 0:
      _fail(f"model.{field}", config.model[field], "there is no head (projection_dim=0)")
  if methods.get(config.method).uses_predictor and config.model.projection_dim <= 0:
    _fail("model.projection_dim", config.model.projection_dim,
          f"{config.method} needs a projection head (> 0) for its predictor")
  if not methods.get(config.method).uses_predictor:
    if config.model.predictor_norm != "none":
      _fail("model.predictor_norm", config.model.predictor_norm,
            f"{config.method} has no predictor")
    if tuple(config.model.predictor_hidden):
      _fail("model.predictor_hidden", tuple(config.model.predictor_hidden),
            f"{config.method} has no predictor")
  if config.augment.local_crops and not methods.get(config.method).uses_local_views:
    _fail("augment.local_crops", config.augment.local_crops,
          f"{config.method} reads two views only (multi-crop: dino, swav)")
  if methods.get(config.method).uses_prototypes and (
      not isinstance(config.model.prototypes, int) or config.model.prototypes <= 0):
    _fail("model.prototypes", config.model.prototypes,
          f"{config.method} needs a positive number of prototypes")
  fit_sizes = {}
  if config.eval_every_epochs > 0:
    fit_sizes["monitor_bank_size"] = config.monitor_bank_size
  if config.eval_train_examples > 0:
    fit_sizes["eval_train_examples"] = config.eval_train_examples
  for name, size in fit_sizes.items():
    if config.knn_k > size:
      _fail("knn_k", config.knn_k, f"must be <= {size} ({name})")
  if config.knn_k <= 0:
    _fail("knn_k", config.knn_k, "must be a positive integer")
  weighted = tuple(config.weighted_knn_k)
  if not all(isinstance(k, int) and k > 0 for k in weighted):
    _fail("weighted_knn_k", weighted, "every k must be a positive integer")
  if weighted and config.eval_train_examples > 0 and max(weighted) > config.eval_train_examples:
    _fail("weighted_knn_k", weighted, f"must be <= {config.eval_train_examples} "
          "(eval_train_examples)")
  if not config.weighted_knn_temperature > 0:
    _fail("weighted_knn_temperature", config.weighted_knn_temperature, "must be > 0")
  if config.image_size < 0:
    _fail("image_size", config.image_size, "must be 0 (keep) or a positive integer")
  if config.unlabelled_split and methods.get(config.method).uses_labels:
    _fail("unlabelled_split", config.unlabelled_split,
          f"{config.method} reads labels; unlabelled images have none")
  check_dataset(config)


def _check_augment(augment):
  lo, hi = augment.crop_scale
  if not 0 < lo <= hi <= 1:
    _fail("augment.crop_scale", tuple(augment.crop_scale), "need 0 < min <= max <= 1")
  lo, hi = augment.crop_ratio
  if not 0 < lo <= hi:
    _fail("augment.crop_ratio", tuple(augment.crop_ratio), "need 0 < min <= max")
  for field in ("rotation_degrees", "elastic_alpha", "brightness", "contrast"):
    if not augment[field] >= 0:  # NaN too
      _fail(f"augment.{field}", augment[field], "must be >= 0")
  for field in ("flip_probability", "jitter_probability", "grayscale_probability"):
    if not 0 <= augment[field] <= 1:
      _fail(f"augment.{field}", augment[field], "must be a probability in [0, 1]")
  for field in ("blur_probability", "solarize_probability"):
    pair = augment[field]
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(p, (int, float)) and 0 <= p <= 1 for p in pair)):
      _fail(f"augment.{field}", pair, "must be a pair (view 1, view 2) of probabilities")
  for field in ("crop_scale", "crop_ratio", "blur_sigma"):  # ConfigDict keeps them tuples
    if len(augment[field]) != 2:
      _fail(f"augment.{field}", tuple(augment[field]), "must be a pair (min, max)")
  if not isinstance(augment.local_crops, int) or augment.local_crops < 0:
    _fail("augment.local_crops", augment.local_crops, "must be 0 (two views only) or a positive integer")
  if len(augment.local_crop_scale) != 2 or not 0 < augment.local_crop_scale[0] <= (
      augment.local_crop_scale[1]) <= 1:
    _fail("augment.local_crop_scale", tuple(augment.local_crop_scale),
          "must be a pair (min, max) with 0 < min <= max <= 1")
  if not isinstance(augment.local_crop_size, int) or augment.local_crop_size < 0:
    _fail("augment.local_crop_size", augment.local_crop_size,
          "must be 0 (the images' size) or a positive integer")
  lo, hi = augment.blur_sigma
  if not 0 < lo <= hi:
    _fail("augment.blur_sigma", tuple(augment.blur_sigma), "need 0 < min <= max")
  for field in ("saturation", "hue"):
    if not augment[field] >= 0:
      _fail(f"augment.{field}", augment[field], "must be >= 0")
  if augment.hue > 0.5:
    _fail("augment.hue", augment.hue, "must be at most 0.5 (a shift of half a turn)")
  if not 0 <= augment.shear_degrees < 90:  # tan(90 degrees) is infinite
    _fail("augment.shear_degrees", augment.shear_degrees, "must be in [0, 90)")
  if not isinstance(augment.elastic_grid, int) or augment.elastic_grid <= 0:
    _fail("augment.elastic_grid", augment.elastic_grid, "must be a positive integer")


def _check_model(model):
  if model.kernels == "cpu" and not encoders.get(model.encoder).uses_custom_kernels:
    _fail("model.kernels", "cpu", f"the custom CPU kernels are simple_cnn's; {model.encoder} "
          "runs XLA's own (use auto or xla)")
  if model.width != -1 and (not isinstance(model.width, int) or model.width <= 0):
    _fail("model.width", model.width, "must be -1 (the named size's) or a positive integer")
  if encoders.get(model.encoder).uses_patches and model.width != -1 and (
      model.width % encoders.vit_heads(model.width)):
    _fail("model.width", model.width, f"must divide by its {encoders.vit_heads(model.width)} "
          "attention heads (one per 64 of width)")
  if model.vit_depth != -1 and (not isinstance(model.vit_depth, int) or model.vit_depth <= 0):
    _fail("model.vit_depth", model.vit_depth, "must be -1 (the named size's) or positive")
  if not isinstance(model.patch_size, int) or model.patch_size <= 0:
    _fail("model.patch_size", model.patch_size, "must be a positive integer")
  widths = {"model.conv_features": tuple(model.conv_features),
            "model.projection_hidden": tuple(model.projection_hidden),
            "model.predictor_hidden": tuple(model.predictor_hidden)}
  for field, values in widths.items():
    if not all(isinstance(v, int) and v > 0 for v in values):
      _fail(field, values, "every width must be a positive integer")
  if not model.conv_features:
    _fail("model.conv_features", (), "needs at least one conv block")
  for field in ("convs_per_block", "dense_features"):
    if not isinstance(model[field], int) or model[field] <= 0:
      _fail(f"model.{field}", model[field], "must be a positive integer")
  if not isinstance(model.projection_dim, int) or model.projection_dim < 0:
    _fail("model.projection_dim", model.projection_dim, "must be 0 (no head) or positive")
  if not 0 <= model.bn_momentum < 1:
    _fail("model.bn_momentum", model.bn_momentum, "must be in [0, 1)")


def check_workdir(workdir):
  """The workdir must be creatable and writable.

  Every process of a run checks the same workdir at once, so each writes its
  own uniquely named probe (a shared name lets one process delete another's).
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_"):
      pass
  except OSError as e:
    raise ConfigError(f"--workdir={workdir!r}: cannot be written ({e.strerror})") from e
