"""cl_jax: contrastive self-supervised learning in JAX/Flax."""

import os

# TensorFlow is only TFDS's reader here: without these, its C++ side prints INFO lines
# (oneDNN's notice among them) when it loads. Set before it loads; a value already in the
# environment is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
