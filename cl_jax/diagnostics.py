"""Representation diagnostics in NumPy: the numbers that show a collapse or a plateau.

`alignment` and `uniformity` are those of Wang & Isola (2020), on L2-normalised
rows; `effective_rank` is that of Roy & Vetterli (2007). A full collapse (every
input mapped to one point) has effective rank 1 and uniformity 0; a dimensional
collapse has an effective rank far below the feature dimension.
"""

import numpy as np
from scipy.special import logsumexp

from cl_jax.evaluation import normalize_rows


def alignment(z1, z2, alpha=2):
  """Mean ||f(x) - f(y)||^alpha over the positive pairs (row i of z1, row i of z2), with f
  the L2-normalised rows: 0 when each pair maps to one direction, at most 2^alpha."""
  z1, z2 = normalize_rows(np.asarray(z1, np.float64)), normalize_rows(np.asarray(z2, np.float64))
  return float(np.mean(np.linalg.norm(z1 - z2, axis=1) ** alpha))


def uniformity(z, t=2):
  """log of the mean of exp(-t ||f(x) - f(y)||^2) over the distinct pairs of rows of z, with f
  the L2-normalised rows: 0 when every row points the same way, lower when they spread.

  Builds the [n, n] Gram matrix: meant for a few thousand rows.
  """
  z = normalize_rows(np.asarray(z, np.float64))
  # Unit rows: ||a - b||^2 = 2 - 2 a.b; clipped because rounding can take it below 0.
  squared = np.maximum(2.0 - 2.0 * (z @ z.T), 0.0)[np.triu_indices(len(z), k=1)]
  return float(logsumexp(-t * squared) - np.log(len(squared)))


def effective_rank(z):
  """exp of the Shannon entropy of the singular values of the centred rows, normalised to sum
  to 1: between 1 and min(n, d), equal to k for k orthogonal directions of equal variance.

  Rows with no variance at all (a full collapse) have no singular value to normalise;
  they return 1.0, the limit as all variance goes to one direction.
  """
  z = np.asarray(z, np.float64)
  singular = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)
  if singular.sum() == 0:
    return 1.0
  p = singular[singular > 0] / singular.sum()
  return float(np.exp(-np.sum(p * np.log(p))))
