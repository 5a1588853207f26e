"""Metrics to WORKDIR/metrics.jsonl and TensorBoard, written by process 0 only."""

import json
import logging
import math
import os

from cl_jax import multihost


def strict_json_value(obj):
  """`obj` with every NaN or infinite float replaced by None: JSON has no NaN, and strict
  readers (JavaScript's JSON.parse, jq) refuse Python's NaN and Infinity."""
  if isinstance(obj, dict):
    return {k: strict_json_value(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict_json_value(v) for v in obj]
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


class MetricWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

  def __init__(self, workdir, start_step=0):
    """Appends to the run's log, dropping entries after `start_step` (a resumed run redoes them)."""
    self.enabled = multihost.is_main_process()
    if not self.enabled:
      return
    path = os.path.join(workdir, "metrics.jsonl")
    kept = []
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start_step]
    self._jsonl = open(path, "w", encoding="utf-8")
    self._jsonl.writelines(kept)
    self._summary = None
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:  # an accelerator image without TensorFlow: metrics.jsonl only
      logging.warning("tensorflow is not installed: no TensorBoard events, metrics.jsonl only")
      return
    self._tf = tf
    self._summary = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step, scalars):
    """Logs float scalars at `step`."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps(strict_json_value({"step": int(step), **scalars}),
                                 allow_nan=False) + "\n")
    self._jsonl.flush()
    if self._summary is None:
      return
    with self._summary.as_default():
      for name, value in scalars.items():
        self._tf.summary.scalar(name, value, step=int(step))
    self._summary.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      if self._summary is not None:
        self._summary.close()
