"""SimCLR on CIFAR-10 with ResNet-18: solo-learn's recipe (scripts/pretrain/cifar/simclr.yaml).

  python -m cl_jax.train --config configs/cifar10.py --workdir runs/cifar10

solo-learn (da Costa et al., JMLR 2022; README, "Results / CIFAR-10") reports
**90.74%** top-1 of its online linear classifier on the test split after these
1000 epochs (BYOL: 92.58%, configs/cifar10_byol.py). Its classifier trains on
the augmented training images during pre-training; the closest numbers here are
`linear_probe` (logistic regression on frozen features, fit on the training
split) and, a few points below it usually, the k-NN keys.

What is theirs: ResNet-18 with the CIFAR stem, BatchNorm synchronised over the
global batch; a 2048-256 projector with BN; temperature 0.2; LARS (eta 0.02, its
clip_lr, biases and norms excluded) at 0.4 x batch / 256, weight decay 1e-4,
batch 256, 10 warm-up epochs then a cosine decay; the views: crop 0.08-1,
flip 0.5, colour jitter 0.4/0.4/0.2/0.1 with probability 0.8, grayscale 0.2,
no blur, no solarization. What differs: their mixed precision (float16) is
float32 here (--config.dtype=bfloat16 on accelerators); their warm-up starts
at 3e-5, ours at 0; their stem conv pads by 2 (34x34 maps), ours by 1 as
SimCLR's CIFAR variant; they pass each view through the network on its own
(BatchNorm statistics per view), we pass both views as one batch (statistics
over both, as SimCLR's TPU code).

Not run here: this machine cannot download CIFAR-10, and 1000 epochs of
ResNet-18 want a GPU (docs/performance.md has the step rate measured here on
CPU: `scripts/benchmark.py --workload cifar10`).
"""

from cl_jax import default_config


def get_config():
  """Returns the CIFAR-10 SimCLR config."""
  config = default_config.get_config()
  config.dataset = "cifar10"
  config.model.encoder = "resnet18"
  config.model.resnet_stem = "cifar"
  config.model.projection_hidden = (2048,)
  config.model.projection_dim = 256
  config.model.head_norm = "batch"
  config.temperature = 0.2
  config.batch_size = 256
  config.num_epochs = 1000
  config.optimizer = "lars"
  config.learning_rate = 0.4
  config.lr_batch_scaling = True
  config.weight_decay = 1e-4
  config.lars_trust_coefficient = 0.02
  config.lars_clip = True
  config.lr_schedule = "cosine"
  config.warmup_epochs = 10.0
  # SimCLR's views for 32x32 colour images (solo-learn's augmentations/symmetric.yaml).
  a = config.augment
  a.crop_scale = (0.08, 1.0)
  a.rotation_degrees = 0.0
  a.flip_probability = 0.5
  a.brightness, a.contrast, a.saturation, a.hue = 0.4, 0.4, 0.2, 0.1
  a.jitter_probability = 0.8
  a.grayscale_probability = 0.2
  config.eval_every_epochs = 10  # the monitor every 10 epochs of the 1000
  return config
