"""DINO on MNIST: the default config's data, views, encoder and schedule, with a teacher
(the student's EMA, its rate rising from 0.99 to 1 along a cosine; solo-learn's CIFAR
base_tau 0.9995 is for 1,000 epochs), a head ending in prototypes, the paper's student
temperature 0.1 and its teacher temperature warming up from 0.04 to 0.07, over one epoch
here (the paper's 30 of 100), and its centre momentum 0.9. The head is the paper's
shape scaled to a 128-wide encoder: no BatchNorm, a 256-wide bottleneck before the
prototypes (DINO's 2048-wide hidden layers and 65,536 prototypes, solo-learn's CIFAR 4,096,
here 512 and 1,024); ReLU where DINO has GELU. Two views: multi-crop
(`augment.local_crops`) with 28-pixel local crops fell from 90% to 87% k-NN in its
second epoch here (docs/tuning.md).

  python -m cl_jax.train --config configs/mnist_dino.py --workdir runs/mnist_dino
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the DINO config."""
  config = mnist.get_config()
  config.method = "dino"
  config.momentum = 0.99  # the teacher's starting EMA rate, cosine to 1
  config.model.projection_hidden = (512,)
  config.model.projection_dim = 256  # the bottleneck the prototypes read
  config.model.prototypes = 1024
  config.dino_student_temperature = 0.1
  config.dino_teacher_temperature = (0.04, 0.07)
  config.dino_teacher_warmup_epochs = 1.0
  config.dino_centre_momentum = 0.9
  return config
