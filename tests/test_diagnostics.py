"""cl_jax.diagnostics against references written another way (loops, scipy) and known values."""

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats

from cl_jax import diagnostics


def unit(x):
  return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True))


@pytest.mark.parametrize("alpha", [1, 2, 3])
def test_alignment_matches_a_loop_over_pairs(alpha):
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
  expected = sum(np.sqrt(np.sum((unit(a) - unit(b)) ** 2)) ** alpha for a, b in zip(z1, z2)) / 7
  assert diagnostics.alignment(z1, z2, alpha) == pytest.approx(expected, rel=1e-12)  # float64


def test_alignment_of_identical_and_opposite_pairs():
  z = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
  # Float32 inputs normalised in float64: zero up to the rounding of the norms.
  assert diagnostics.alignment(z, z) == pytest.approx(0.0, abs=1e-12)
  assert diagnostics.alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-12)  # direction only
  # Antipodal pairs are 2 apart on the sphere: 2^alpha, the maximum.
  assert diagnostics.alignment(z, -z, alpha=3) == pytest.approx(8.0, rel=1e-12)


@pytest.mark.parametrize("t", [0.5, 2, 5])
def test_uniformity_matches_pdist(t):
  z = np.random.default_rng(2).normal(size=(30, 8))
  squared = scipy.spatial.distance.pdist(unit(z), "sqeuclidean")  # the 435 distinct pairs
  expected = np.log(np.mean(np.exp(-t * squared)))
  # Gram-matrix distances vs pdist's differences: float64 rounding, far below 1e-9.
  assert diagnostics.uniformity(z, t) == pytest.approx(expected, rel=1e-9)


def test_uniformity_of_a_collapse_and_of_two_opposite_points():
  row = np.random.default_rng(3).normal(size=16)
  collapsed = np.stack([row, 2 * row, row, 0.5 * row])  # one direction, several lengths
  assert diagnostics.uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)  # log mean exp(0)
  # One pair at squared distance 4: log exp(-4 t).
  assert diagnostics.uniformity(np.stack([row, -row]), t=2) == pytest.approx(-8.0, rel=1e-12)


def reference_effective_rank(z):
  """Singular values from the eigenvalues of the centred Gram matrix; scipy's entropy."""
  centred = z - z.mean(axis=0)
  eigenvalues = np.linalg.eigvalsh(centred.T @ centred)
  # Squaring puts rounding of ~1e-16 * the largest eigenvalue on the zero ones, which the
  # square root would lift to ~1e-8 singular values: those count as zero.
  eigenvalues[eigenvalues < 1e-12 * eigenvalues.max()] = 0
  return np.exp(scipy.stats.entropy(np.sqrt(eigenvalues)))  # entropy normalises to sum 1


def test_effective_rank_matches_the_reference():
  z = np.random.default_rng(4).normal(size=(20, 6)) * np.array([5, 3, 1, 1, 0.2, 0.1])
  # Eigenvalue route vs SVD: the smallest singular values differ by ~1e-15 relative.
  assert diagnostics.effective_rank(z) == pytest.approx(reference_effective_rank(z), rel=1e-8)


def test_effective_rank_of_a_full_collapse_is_one():
  row = np.random.default_rng(5).normal(size=(1, 12)).astype(np.float32)
  assert diagnostics.effective_rank(np.repeat(row, 50, axis=0)) == pytest.approx(1.0, abs=1e-9)
  assert diagnostics.effective_rank(np.zeros((10, 4))) == 1.0  # no variance at all


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_effective_rank_of_k_equal_orthogonal_directions_is_k(k):
  rng = np.random.default_rng(k)
  # Hadamard columns after the first: zero mean, orthogonal, equal norms (8 points).
  coefficients = scipy.linalg.hadamard(8)[:, 1:1 + k].astype(np.float64)
  directions = np.linalg.qr(rng.normal(size=(10, k)))[0]  # orthonormal, in 10 dimensions
  z = coefficients @ directions.T + rng.normal(size=10)  # plus an offset: centring removes it
  # Equal singular values up to float64 rounding.
  assert diagnostics.effective_rank(z) == pytest.approx(k, abs=1e-9)


def test_effective_rank_of_unequal_rank_k_lies_between_1_and_k():
  rng = np.random.default_rng(6)
  k = 3
  z = rng.normal(size=(40, k)) * np.array([10.0, 1.0, 0.1]) @ rng.normal(size=(k, 16))
  rank = diagnostics.effective_rank(z)
  assert 1.0 < rank < k
  # As above: the k nonzero singular values agree to ~1e-15 relative.
  assert rank == pytest.approx(reference_effective_rank(z), rel=1e-8)
