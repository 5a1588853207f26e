"""Contrastive losses."""

import jax
import jax.numpy as jnp

# Keeps normalisation finite for zero-norm embeddings (their cosine similarity is 0).
_NORM_EPS = 1e-12
# Similarities in float32 whatever the backend's default matmul precision (TF32 on Ampere+
# GPUs, bf16 passes on TPU): at t = 0.1 a similarity off by 1e-3 moves a logit by 1e-2.
HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x, axis=-1):
  """x / max(||x||, eps), finite (with finite gradient) at x = 0."""
  sq_norm = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, _NORM_EPS**2))


def gather(x, axis_name):
  """`x` [n, ...] of every device of `axis_name` in device order (the global batch), or `x`."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _two_view_similarities(z1, z2, axis_name):
  """Cosine similarities of this device's 2n views with the global batch's 2N views.

  Returns (similarities [2n, 2N], self_index [2n], is_self [2n, 2N]):
  candidates are view 1 of every example (in device order), then view 2 of every
  example; anchors are the local views 1 then views 2; `self_index[a]` is anchor
  a's own column and `is_self` marks it. Gradients from other devices' anchors come back through the transpose
  of `all_gather`, so `pmean` of per-device gradients is the global gradient.
  """
  z1 = l2_normalize(z1.astype(jnp.float32))
  z2 = l2_normalize(z2.astype(jnp.float32))
  local_n = z1.shape[0]
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_n
  all1, all2 = gather(z1, axis_name), gather(z2, axis_name)
  global_n = all1.shape[0]
  candidates = jnp.concatenate([all1, all2])  # [2N, d]
  anchors = jnp.concatenate([z1, z2])  # [2n, d]
  local = offset + jnp.arange(local_n)
  self_index = jnp.concatenate([local, local + global_n])
  is_self = jnp.arange(2 * global_n)[None, :] == self_index[:, None]
  return jnp.matmul(anchors, candidates.T, precision=HIGHEST), self_index, is_self


def _label_masks(labels, is_self, axis_name):
  """(positive, negative) boolean masks [2n, 2N] from per-example labels [n]."""
  anchor_labels = jnp.concatenate([labels, labels])
  all_labels = gather(labels, axis_name)
  candidate_labels = jnp.concatenate([all_labels, all_labels])
  same = anchor_labels[:, None] == candidate_labels[None, :]
  return same & ~is_self, ~same


def nt_xent(z1, z2, temperature, axis_name=None):
  """NT-Xent (SimCLR's InfoNCE) over the global batch, averaged over local anchors.

  `z1[i]` and `z2[i]` are the two views of example i held by this device. With
  `axis_name`, views from all devices along that axis are gathered, so every
  view in the global batch (2N of them) is a candidate; the anchors are the 2n
  local views. For anchor i with positive p(i):

    loss_i = -log( exp(s_ip / t) / sum_{k != i} exp(s_ik / t) ),

  s = cosine similarity. Returns the mean over local anchors; since every device
  holds the same number, the mean over devices (`pmean`) is the global loss and
  `pmean` of per-device gradients is its gradient. Computed in float32 whatever
  the input dtype.
  """
  similarities, self_index, is_self = _two_view_similarities(z1, z2, axis_name)
  global_n = similarities.shape[1] // 2
  logits = jnp.where(is_self, -jnp.inf, similarities / temperature)
  positive_index = (self_index + global_n) % (2 * global_n)  # the other view
  positive = jnp.take_along_axis(logits, positive_index[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def supervised_contrastive(z1, z2, labels, temperature, axis_name=None):
  """SupCon (Khosla et al. 2020, L_out): positives are all other views with the anchor's label.

    loss_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / t) / sum_{k != i} exp(s_ik / t) ),

  over the global batch's 2N views, averaged over the local anchors (`labels`:
  int [n], one per example; both views share it). With labels all distinct it
  is NT-Xent. Every anchor has at least one positive: its other view.
  """
  similarities, _, is_self = _two_view_similarities(z1, z2, axis_name)
  positive, _ = _label_masks(labels, is_self, axis_name)
  logits = jnp.where(is_self, -jnp.inf, similarities / temperature)
  log_prob = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
  per_anchor = -jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.sum(positive, axis=1)
  return jnp.mean(per_anchor)


def _unit_distances(similarities):
  """Euclidean distances of unit vectors from their cosine similarities; finite gradient at 0."""
  return jnp.sqrt(jnp.maximum(2.0 - 2.0 * similarities, 1e-12))


def _hardest_positive_and_negative(z1, z2, labels, axis_name):
  similarities, _, is_self = _two_view_similarities(z1, z2, axis_name)
  positive, negative = _label_masks(labels, is_self, axis_name)
  distances = _unit_distances(similarities)
  hardest_positive = jnp.max(jnp.where(positive, distances, -jnp.inf), axis=1)
  hardest_negative = jnp.min(jnp.where(negative, distances, jnp.inf), axis=1)
  return hardest_positive, hardest_negative


def batch_hard_triplet(z1, z2, labels, margin, axis_name=None):
  """Batch-hard triplet loss (Hermans et al. 2017) on L2-normalised embeddings.

  For each local anchor over the global batch's 2N views: the farthest view with
  its label (the hardest positive) and the nearest view with another label (the
  hardest negative), loss_i = max(0, d_ap - d_an + margin), averaged over anchors.
  Distances are Euclidean between unit vectors (0 to 2).
  """
  hardest_positive, hardest_negative = _hardest_positive_and_negative(z1, z2, labels, axis_name)
  return jnp.mean(jax.nn.relu(hardest_positive - hardest_negative + margin))


def soft_margin_triplet(z1, z2, labels, axis_name=None):
  """Batch-hard triplet with Hermans et al.'s soft margin: loss_i = log(1 + exp(d_ap - d_an)),
  hardest positive and negative as in `batch_hard_triplet`, averaged over anchors. It keeps
  pulling (no margin at which the gradient stops)."""
  hardest_positive, hardest_negative = _hardest_positive_and_negative(z1, z2, labels, axis_name)
  return jnp.mean(jax.nn.softplus(hardest_positive - hardest_negative))


def semi_hard_triplet(z1, z2, labels, margin, axis_name=None):
  """FaceNet's semi-hard triplet loss (Schroff et al. 2015) on L2-normalised embeddings.

  For each local anchor a and each positive p (another view with a's label) over
  the global batch's 2N views: the negative is the nearest one farther than p
  (d_an > d_ap); if there is none, the farthest negative (as TensorFlow Addons'
  `triplet_semihard_loss`). loss_ap = max(0, d_ap - d_an + margin), averaged over
  each anchor's positives, then over anchors (so devices with equal shards average
  to the global loss). Avoiding the hardest negatives avoids the collapse
  that batch-hard mining falls into early in training.
  """
  similarities, _, is_self = _two_view_similarities(z1, z2, axis_name)
  positive, negative = _label_masks(labels, is_self, axis_name)
  distances = _unit_distances(similarities)
  # Each anchor's negative distances in increasing order (non-negatives last, as +inf).
  sorted_negatives = jnp.sort(jnp.where(negative, distances, jnp.inf), axis=1)
  farthest = jnp.max(jnp.where(negative, distances, -jnp.inf), axis=1)
  # For each (anchor, candidate positive): the first negative strictly farther than it.
  first_farther = jax.vmap(lambda row, d: jnp.searchsorted(row, d, side="right"))(
      sorted_negatives, distances)
  nearest_farther = jnp.take_along_axis(
      sorted_negatives, jnp.minimum(first_farther, sorted_negatives.shape[1] - 1), axis=1)
  chosen = jnp.where(jnp.isfinite(nearest_farther), nearest_farther, farthest[:, None])
  per_pair = jax.nn.relu(distances - chosen + margin)
  return jnp.mean(jnp.sum(jnp.where(positive, per_pair, 0.0), axis=1) / jnp.sum(positive, axis=1))


def batch_all_triplet(z1, z2, labels, margin, axis_name=None):
  """Batch-all triplet loss averaged over its active triplets (Hermans et al. 2017, "BA≠0").

  Every (anchor a, positive p, negative n) over the global batch's 2N views, with
  a local: loss = sum max(0, d_ap - d_an + margin) / (number of triplets whose
  loss is > 0, over the global batch). Unlike batch-hard and semi-hard mining,
  every violating negative pulls, so a step has many triplets' gradients, not
  one per pair. The count is global (`psum`), so the mean over devices of the
  per-device values is the global loss; it is piecewise constant (no gradient).

  Memory is [2n, 2N], not [2n, 2N, 2N]: for each (a, p) the violating negatives
  are those with d_an < d_ap + margin, a prefix of a's sorted negative distances,
  so their count and sum come from `searchsorted` and a cumulative sum.
  """
  similarities, _, is_self = _two_view_similarities(z1, z2, axis_name)
  positive, negative = _label_masks(labels, is_self, axis_name)
  distances = _unit_distances(similarities)
  sorted_negatives = jnp.sort(jnp.where(negative, distances, jnp.inf), axis=1)
  # prefix_sums[a, k]: the sum of a's k nearest negative distances (k = 0 .. 2N).
  prefix_sums = jnp.concatenate(
      [jnp.zeros_like(distances[:, :1]),
       jnp.cumsum(jnp.where(jnp.isfinite(sorted_negatives), sorted_negatives, 0.0), axis=1)],
      axis=1)
  reach = distances + margin  # [a, p]: a negative violates if it is nearer than this
  violating = jax.vmap(lambda row, r: jnp.searchsorted(row, r, side="left"))(
      sorted_negatives, reach)  # how many negatives are strictly nearer
  pair_sums = violating * reach - jnp.take_along_axis(prefix_sums, violating, axis=1)
  total = jnp.sum(jnp.where(positive, pair_sums, 0.0))
  # Counted in float32: up to 2n x 2N x 2N triplets overflows int32 at large batches.
  active = jnp.sum(jnp.where(positive, violating, 0).astype(jnp.float32))
  num_devices = 1
  if axis_name is not None:
    active = jax.lax.psum(active, axis_name)
    num_devices = jax.lax.axis_size(axis_name)
  return total * num_devices / jnp.maximum(active, 1.0)


def margin_contrastive(z1, z2, labels, margin, axis_name=None):
  """The pairwise contrastive (margin) loss of Hadsell, Chopra & LeCun (2006), per anchor.

    loss_i = 1/2 [ mean_{p in P(i)} d_ip^2 + mean_{n in N(i)} max(0, margin - d_in)^2 ],

  over the global batch's 2N views (P: other views with the anchor's label, N:
  views with another label), averaged over local anchors; d is the Euclidean
  distance between L2-normalised embeddings. Averaging positives and negatives
  separately keeps the few positive pairs from being swamped.
  """
  similarities, _, is_self = _two_view_similarities(z1, z2, axis_name)
  positive, negative = _label_masks(labels, is_self, axis_name)
  squared = jnp.maximum(2.0 - 2.0 * similarities, 0.0)
  pulled = jnp.sum(jnp.where(positive, squared, 0.0), axis=1) / jnp.sum(positive, axis=1)
  hinge = jax.nn.relu(margin - _unit_distances(similarities)) ** 2
  pushed = jnp.sum(jnp.where(negative, hinge, 0.0), axis=1) / jnp.sum(negative, axis=1)
  return jnp.mean(0.5 * (pulled + pushed))


def queue_infonce(queries, keys, queue, temperature):
  """MoCo's InfoNCE: each query's positive is its key, its negatives the queue's keys.

    loss_i = -log( exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.u_j / t)) ),

  with q, k L2-normalised here and the queue rows `u_j` already unit vectors.
  Averaged over the local queries; no cross-device terms (the queue is shared
  state, filled from every device's keys).
  """
  queries = l2_normalize(queries.astype(jnp.float32))
  keys = l2_normalize(keys.astype(jnp.float32))
  positive = jnp.sum(queries * keys, axis=1, keepdims=True)
  logits = jnp.concatenate([positive, jnp.matmul(queries, queue.T, precision=HIGHEST)],
                           axis=1) / temperature
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def byol_regression(predictions, targets):
  """BYOL's loss for one direction: mean over examples of 2 - 2 cos(prediction, target)."""
  cosine = jnp.sum(l2_normalize(predictions.astype(jnp.float32)) *
                   l2_normalize(targets.astype(jnp.float32)), axis=1)
  return jnp.mean(2.0 - 2.0 * cosine)


def _global_sum(x, axis_name):
  """The sum of `x` over this device's rows and, with `axis_name`, every device's."""
  return _psum(jnp.sum(x, axis=0), axis_name)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _global_count(n, axis_name):
  """The global batch's size from this device's `n` (every device holds as many)."""
  return n if axis_name is None else n * jax.lax.axis_size(axis_name)


def global_mean(x, axis_name):
  """The mean of `x`'s rows over the global batch (this device's and every device's)."""
  return _global_sum(x, axis_name) / _global_count(x.shape[0], axis_name)


def _global_standardise(z, axis_name, eps=1e-5):
  """Each column of `z` minus its mean over the global batch, over its (biased) standard
  deviation there: BatchNorm without scale or offset, as Barlow Twins' `bn(z)`."""
  count = _global_count(z.shape[0], axis_name)
  mean = _global_sum(z, axis_name) / count
  centred = z - mean
  variance = _global_sum(centred * centred, axis_name) / count
  return centred * jax.lax.rsqrt(variance + eps)


def barlow_twins(z1, z2, off_diagonal_weight, axis_name=None):
  """Barlow Twins (Zbontar et al. 2021, eq. 1), the same value on every device.

    C_ij = sum_b zn1_bi zn2_bj / N,  loss = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2,

  with each view's embeddings standardised over the global batch of N (`zn`) and the sum
  over the global batch (a psum of each device's part), as the paper's code (SyncBatchNorm,
  then an all_reduce of c divided by the global batch)."""
  z1 = _global_standardise(z1.astype(jnp.float32), axis_name)
  z2 = _global_standardise(z2.astype(jnp.float32), axis_name)
  count = _global_count(z1.shape[0], axis_name)
  correlation = _psum(jnp.matmul(z1.T, z2, precision=HIGHEST), axis_name) / count
  on_diagonal = jnp.sum((1.0 - jnp.diagonal(correlation)) ** 2)
  return on_diagonal + off_diagonal_weight * _off_diagonal_sum_of_squares(correlation)


def _off_diagonal_sum_of_squares(matrix):
  """The sum of the squares of a square matrix's off-diagonal entries (masked, not a
  difference of two sums: that loses the small off-diagonal part to rounding)."""
  off = ~jnp.eye(matrix.shape[0], dtype=bool)
  return jnp.sum(jnp.where(off, matrix, 0.0) ** 2)


def _variance_and_covariance_terms(z, axis_name, eps=1e-4):
  """VICReg's v(Z) = mean_j relu(1 - sqrt(Var(z_j) + eps)) and c(Z) = sum_{i != j} Cov_ij^2 / d,
  with the unbiased variance and covariance over the global batch."""
  count = _global_count(z.shape[0], axis_name)
  centred = z - _global_sum(z, axis_name) / count
  covariance = _psum(jnp.matmul(centred.T, centred, precision=HIGHEST), axis_name) / (count - 1)
  variance_term = jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(jnp.diagonal(covariance) + eps)))
  covariance_term = _off_diagonal_sum_of_squares(covariance) / z.shape[1]
  return variance_term, covariance_term


def vicreg(z1, z2, weights, axis_name=None):
  """VICReg (Bardes et al. 2022, eq. 6 and Algorithm 1), per device:

    lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')],

  s the mean squared distance of the pairs (this device's; its mean over devices is the
  global one), v and c over the global batch (the same on every device, as the paper's code
  gathers the embeddings). `weights` = (lambda, mu, nu). As the paper's equation and
  solo-learn; the paper's code (main_vicreg.py) halves the variance term, v(Z)/2 + v(Z')/2.
  The covariance is psum'd as a d x d matrix: for d well above the global batch, gathering
  the embeddings would move less."""
  z1, z2 = z1.astype(jnp.float32), z2.astype(jnp.float32)
  invariance_weight, variance_weight, covariance_weight = weights
  invariance = jnp.mean(jnp.sum((z1 - z2) ** 2, axis=1)) / z1.shape[1]
  variance1, covariance1 = _variance_and_covariance_terms(z1, axis_name)
  variance2, covariance2 = _variance_and_covariance_terms(z2, axis_name)
  return (invariance_weight * invariance + variance_weight * (variance1 + variance2) +
          covariance_weight * (covariance1 + covariance2))


def negative_cosine(predictions, targets):
  """SimSiam's D(p, z) for one direction: minus the mean cosine similarity (the targets are
  constants of the step: the caller stops their gradient)."""
  return -jnp.mean(jnp.sum(l2_normalize(predictions.astype(jnp.float32)) *
                           l2_normalize(targets.astype(jnp.float32)), axis=1))


def cross_view_infonce(queries, keys, temperature, axis_name=None):
  """InfoNCE of each local query against every key of the global batch; query i's positive
  is key i (the same example), the other examples' keys its negatives:

    loss_i = -log( exp(q_i.k_i / t) / sum_j exp(q_i.k_j / t) ),  q, k L2-normalised,

  averaged over the local queries (MoCo v3's `ctr` without its 2t factor; NNCLR's loss with
  the nearest neighbours as queries). Gradients reach the keys through the all_gather."""
  queries = l2_normalize(queries.astype(jnp.float32))
  keys = l2_normalize(keys.astype(jnp.float32))
  local_n = queries.shape[0]
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_n
  logits = jnp.matmul(queries, gather(keys, axis_name).T, precision=HIGHEST) / temperature
  positive = jnp.take_along_axis(logits, (offset + jnp.arange(local_n))[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def nearest_neighbours(embeddings, support):
  """For each embedding, the row of `support` (unit vectors) with the largest cosine
  similarity to it; ties go to the lowest row."""
  similarities = jnp.matmul(l2_normalize(embeddings.astype(jnp.float32)), support.T,
                            precision=HIGHEST)
  return support[jnp.argmax(similarities, axis=1)]



def cross_view_cross_entropy(targets, logits):
  """mean over pairs (i, v), v != i, of mean_b -sum_k targets[i]_bk log softmax(logits[v])_bk:
  the targets of each of the first G views [G, n, K] against the predictions of every other
  view [V, n, K] (DINO's and SwAV's loss; with V > G the extra views are local crops).
  Per example, so its mean over devices is the global batch's."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # cross[i, v] = mean_b H(targets[i], softmax(logits[v])).
  cross = -jnp.einsum("ibk,vbk->iv", targets.astype(jnp.float32), log_probs,
                      precision=HIGHEST) / logits.shape[1]
  other = jnp.arange(targets.shape[0])[:, None] != jnp.arange(logits.shape[0])[None, :]
  return jnp.sum(jnp.where(other, cross, 0.0)) / jnp.sum(other)


def dino_cross_entropy(student, teacher, centre, student_temperature, teacher_temperature):
  """DINO's loss (Caron et al. 2021, Algorithm 1 and eq. 3) over this device's examples:

    mean over pairs (i, v), v != i, of mean_b -sum_k P_t(i)_bk log P_s(v)_bk,
    P_t(i) = softmax((t_i - centre) / teacher_temperature),  P_s(v) = softmax(s_v / student_temperature),

  `student`: [V, n, K] scores of every view; `teacher`: [G, n, K] scores of the first G
  (global) views, constants of the step. The centre is the one statistic that spans the
  batch (`global_mean`)."""
  targets = jax.nn.softmax((teacher.astype(jnp.float32) - centre) / teacher_temperature, axis=-1)
  return cross_view_cross_entropy(targets, student.astype(jnp.float32) / student_temperature)


def sinkhorn_knopp(scores, epsilon, iterations, axis_name=None, shared_scores=None):
  """SwAV's assignments (Caron et al. 2020, eq. 3 and Algorithm 1; solo-learn's
  SinkhornKnopp): Q = exp(scores / epsilon) scaled `iterations` times so that every
  prototype holds 1/K of the mass and every example 1/B, over all B rows: this device's
  `scores` [n, K] and every device's (`axis_name`), plus `shared_scores` [Q, K] (SwAV's
  queue), rows that every device holds alike and that count once. Returns this device's
  rows of B Q: assignments that sum to 1 per example. In log space, so that neither a
  small epsilon's exp(1 / epsilon) nor a prototype far from every example over- or
  underflows."""
  parts = [scores.astype(jnp.float32) / epsilon]
  if shared_scores is not None:
    parts.append(shared_scores.astype(jnp.float32) / epsilon)

  def log_total(parts, axis=None):
    """log of the sum of exp(parts) over the global rows (this device's psum'd, the shared
    once), from its maximum there."""
    top = jnp.max(jnp.stack([jnp.max(part, axis=axis) for part in parts]), axis=0)
    top = jax.lax.stop_gradient(top if axis_name is None else jax.lax.pmax(top, axis_name))
    sums = [jnp.sum(jnp.exp(part - top), axis=axis) for part in parts]
    return top + jnp.log(_psum(sums[0], axis_name) + sum(sums[1:]))
  count = _global_count(scores.shape[0], axis_name) + sum(p.shape[0] for p in parts[1:])
  log_prototypes, log_count = jnp.log(scores.shape[1]), jnp.log(count)
  parts = [part - log_total(parts) for part in parts]
  for _ in range(iterations):
    per_prototype = log_total(parts, axis=0)
    parts = [part - per_prototype - log_prototypes for part in parts]
    parts = [part - jax.nn.logsumexp(part, axis=1, keepdims=True) - log_count for part in parts]
  return jnp.exp(parts[0] + log_count)
