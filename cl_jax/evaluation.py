"""Embedding quality: the NumPy bridge, k-NN (scikit-learn and on device), linear probe, t-SNE."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from cl_jax import data
from cl_jax import losses

def seed_protocol_fit(num_test):
  """The replaced example's protocol fits on the first 80% of the test embeddings (MNIST:
  8,000 of 10,000) and predicts the rest: how many it fits on."""
  return num_test * 4 // 5


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, images):
  return model.apply(variables, data.to_float(images))


def embed(model, variables, images, batch_size=1000, devices=None, progress=False):
  """Runs the jitted model over `images` (uint8 [N, H, W, C]) in batches on all devices.

  `variables`: the Flax variables ({"params"} and, with BatchNorm, {"batch_stats"}: its
  running averages are used). The NumPy bridge: returns host float32 (features,
  projections), each [N, dim].
  """
  devices = list(devices or jax.local_devices())
  batch_size = -(-batch_size // len(devices)) * len(devices)  # divisible by device count
  mesh = Mesh(np.array(devices), ("batch",))
  split = NamedSharding(mesh, P("batch"))
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  features, projections = [], []
  for start in tqdm(range(0, len(images), batch_size), desc="embedding", disable=not progress,
                    leave=False):
    batch = images[start:start + batch_size]
    count = len(batch)
    if count < batch_size:  # pad so every batch has one shape: one compilation
      batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:],
                                              batch.dtype)])
    f, p = jax.device_get(_forward(model, variables, jax.device_put(batch, split)))
    features.append(f[:count])
    projections.append(p[:count])
  return np.concatenate(features), np.concatenate(projections)


def normalize_rows(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# Candidates the device ranks beyond k, which the host then orders exactly.
KNN_EXTRA_CANDIDATES = 10
# Unit roundoff of float32: bounds the device's rounding of a score.
_FLOAT32_ROUNDOFF = 2.0 ** -24


@jax.jit
def _with_squared_norms(bank):
  """[b, ||b||^2]: the bank as `_euclidean_candidates` reads it."""
  return jnp.concatenate([bank, jnp.sum(bank * bank, axis=1, keepdims=True)], axis=1)


@functools.partial(jax.jit, static_argnums=2)
def _euclidean_candidates(bank, queries, count):
  """The `count` rows of `bank` ([b, ||b||^2]) with the highest 2 q.b - ||b||^2 (the
  smallest distance ||q - b||^2 but for ||q||^2, the same for every row of one query),
  and those scores: one matmul of [2q, -1] with the bank, no second pass over the scores."""
  queries = jnp.concatenate([2 * queries, -jnp.ones((len(queries), 1), queries.dtype)], axis=1)
  return jax.lax.top_k(jnp.matmul(queries, bank.T, precision=losses.HIGHEST), count)


def _candidate_distances(fit_x, queries64, candidates):
  """Exact float64 squared distances [queries, candidates] of each query to its candidate
  rows of `fit_x`, gathering at most 2^23 values at a time (fewer queries, then fewer
  candidates, per block)."""
  budget, dim = 2**23, fit_x.shape[1]
  rows = max(1, budget // (candidates.shape[1] * dim))
  columns = max(1, budget // (rows * dim))
  distances = np.empty(candidates.shape)
  for row in range(0, len(candidates), rows):
    for column in range(0, candidates.shape[1], columns):
      block = (slice(row, row + rows), slice(column, column + columns))
      difference = fit_x[candidates[block]] - queries64[block[0], None, :]
      distances[block] = np.einsum("qcd,qcd->qc", difference, difference)
  return distances


def knn_predict(fit_x, fit_y, query_x, k=5, metric="euclidean", chunk=None):
  """k-NN predictions (brute force, uniform votes) from exact float64 distances, computed
  on device: scikit-learn's `KNeighborsClassifier` predictions.

  The device ranks the fit rows in float32 (both sides minus the fit rows' mean, which
  distances do not see and which keeps float32's rounding small next to them) and keeps
  `k + KNN_EXTRA_CANDIDATES` candidates per query; the host orders those by their exact
  float64 distance (ties to the lower row, as scikit-learn's) and votes (ties between
  classes to the smallest label). Where float32 rounding could have left a nearer row out
  (the k-th distance is within the rounding bound of the last candidate's), that query
  asks the device for four times as many candidates, until the bound clears or every row
  is a candidate. `metric="cosine"`: euclidean on L2-normalised rows, which orders
  neighbours as cosine similarity does. Inputs are taken as float32 and must be finite.
  `chunk`: queries per device call at most (padded: one compilation per candidate count);
  by default as many as keep the device's scores within 512 MiB.
  """
  if not 1 <= k <= len(fit_x):
    raise ValueError(f"k={k} must be at least 1 and at most the {len(fit_x)} examples the "
                     "k-NN is fit on")
  if metric == "cosine":
    fit_x, query_x = normalize_rows(fit_x), normalize_rows(query_x)
  elif metric != "euclidean":
    raise ValueError(f"metric={metric!r}; allowed: euclidean, cosine")
  fit_x = np.asarray(fit_x, np.float32)
  query_x = np.asarray(query_x, np.float32)
  if not (np.all(np.isfinite(fit_x)) and np.all(np.isfinite(query_x))):
    raise ValueError("the k-NN's inputs must be finite (a NaN or inf embedding: a diverged run?)")
  classes, fit_codes = np.unique(np.asarray(fit_y), return_inverse=True)
  chunk = chunk or max(1, min(len(query_x), 2**27 // len(fit_x)))
  mean = fit_x.mean(axis=0, dtype=np.float64)
  centred = lambda x: (x - mean).astype(np.float32)
  centred_fit = centred(fit_x)
  bank = _with_squared_norms(jnp.asarray(centred_fit))
  bank_norm = np.sqrt(np.max(np.einsum("ij,ij->i", centred_fit, centred_fit, dtype=np.float64)))
  # |device score - exact score| <= 2 (dim + 2) u (|q| + max |b|)^2 for the centred rows:
  # the worst case of a float32 dot product of length dim + 1, of the norms and of the
  # centring's rounding. Twice that is the bound used (slack for TPUs' HIGHEST, bf16x6).
  roundoff = 4 * (fit_x.shape[1] + 2) * _FLOAT32_ROUNDOFF

  def nearest(queries):
    """The k nearest fit rows of each query, exactly."""
    queries64, centred_queries = queries.astype(np.float64), centred(queries)
    norms = np.sqrt(np.einsum("ij,ij->i", centred_queries, centred_queries, dtype=np.float64))
    neighbours = np.empty((len(queries), k), np.int64)
    pending, count = np.arange(len(queries)), min(len(fit_x), k + KNN_EXTRA_CANDIDATES)
    while len(pending):
      # Queries per call at this count: the host's candidate arrays stay near 2^22 entries.
      per_call = max(1, min(chunk, 2**22 // count))
      unresolved = []
      for start in range(0, len(pending), per_call):
        rows = pending[start:start + per_call]
        padded = np.pad(centred_queries[rows], ((0, per_call - len(rows)), (0, 0)))
        scores, candidates = jax.device_get(_euclidean_candidates(bank, jnp.asarray(padded),
                                                                  count))
        scores, candidates = scores[:len(rows)], candidates[:len(rows)]
        distances = _candidate_distances(fit_x, queries64[rows], candidates)
        order = np.lexsort((candidates, distances), axis=1)
        neighbours[rows] = np.take_along_axis(candidates, order, axis=1)[:, :k]
        kth = np.take_along_axis(distances, order, axis=1)[:, k - 1]
        # Every row left out scores at most the last candidate's score plus the rounding
        # bound: its distance is at least this.
        left_out = norms[rows] ** 2 - scores[:, -1] - roundoff * (norms[rows] + bank_norm) ** 2
        unresolved.append(rows[kth >= left_out])
      if count == len(fit_x):
        break
      pending, count = np.concatenate(unresolved), min(len(fit_x), 4 * count)
    return neighbours

  predictions = []
  for start in range(0, len(query_x), chunk):
    neighbours = nearest(query_x[start:start + chunk])
    votes = (fit_codes[neighbours][..., None] == np.arange(len(classes))).sum(axis=1)
    predictions.append(classes[np.argmax(votes, axis=1)])  # ties: the smallest label
  return np.concatenate(predictions) if predictions else np.empty(0, classes.dtype)


def knn_accuracy(fit_x, fit_y, query_x, query_y, k=5, metric="euclidean"):
  """Accuracy of `knn_predict` (scikit-learn's k-NN, on device)."""
  return float(np.mean(knn_predict(fit_x, fit_y, query_x, k, metric) == query_y))


def knn_report(train_x, train_y, test_x, test_y, k=5):
  """Both protocols, euclidean and cosine: `seed` (within the test set) and `train_test`."""
  fit_count = seed_protocol_fit(len(test_x))
  fit, query = slice(0, fit_count), slice(fit_count, None)
  report = {}
  for suffix, metric in (("", "euclidean"), ("_cosine", "cosine")):
    report["knn_seed" + suffix] = knn_accuracy(test_x[fit], test_y[fit], test_x[query],
                                               test_y[query], k, metric)
    report["knn_train_test" + suffix] = knn_accuracy(train_x, train_y, test_x, test_y, k, metric)
  return report


def _cosine_neighbours(bank, queries, k):
  """(similarities, indices) of the k bank rows most cosine-similar to each query; ties in
  similarity are taken lower bank index first (lax.top_k)."""
  similarity = jnp.matmul(losses.l2_normalize(queries), losses.l2_normalize(bank).T,
                          precision=losses.HIGHEST)
  return jax.lax.top_k(similarity, k)


def knn_predict_cosine(bank, bank_labels, queries, k, num_classes):
  """On-device cosine k-NN: majority vote of the k most similar bank rows.

  Votes are uniform; ties between classes go to the smallest label, as in
  scikit-learn. Works on jax arrays inside or outside jit.
  """
  _, neighbours = _cosine_neighbours(bank, queries, k)
  votes = jax.nn.one_hot(bank_labels[neighbours], num_classes).sum(axis=1)
  return jnp.argmax(votes, axis=1)  # argmax returns the first (smallest) of tied maxima


def _weighted_votes(similarities, neighbours, bank_labels, temperature, num_classes):
  """Votes [queries, num_classes] of `neighbours` (bank rows) for their labels, each
  weighted exp(similarity / temperature)."""
  # exp((s - 1) / T): exp(s / T) times one constant, which votes the same and cannot
  # overflow (float32's exp(s / T) does for T below 0.0113).
  weights = jnp.exp((similarities - 1.0) / temperature)
  return (jax.nn.one_hot(bank_labels[neighbours], num_classes) * weights[..., None]).sum(axis=1)


def weighted_knn_scores(bank, bank_labels, queries, k, temperature, num_classes):
  """InstDisc's weighted k-NN votes (Wu et al. 2018, section 3.4), jax arrays in and out:
  the k bank rows most cosine-similar to each query vote for their labels with weight
  exp(similarity / temperature). Returns the votes [queries, num_classes]. Neighbours tied
  in similarity are taken lower bank index first (lax.top_k)."""
  return _weighted_votes(*_cosine_neighbours(bank, queries, k), bank_labels, temperature,
                         num_classes)


_top_cosine_neighbours = jax.jit(_cosine_neighbours, static_argnums=2)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _weighted_predictions(similarities, neighbours, bank_labels, ks, temperature, num_classes):
  """The weighted k-NN's predictions at each of `ks` from one ranking of max(ks) rows (the
  first k of them are the k most similar). A jit of its own: slices of lax.top_k's output
  in the same program make XLA:CPU sort every row in full instead (100x slower here)."""
  return tuple(jnp.argmax(_weighted_votes(similarities[:, :k], neighbours[:, :k],
                                          bank_labels, temperature, num_classes), axis=1)
               for k in ks)


def weighted_knn_accuracies(fit_x, fit_y, query_x, query_y, ks=(200,), temperature=0.1,
                            chunk=500):
  """{k: accuracy} of the weighted k-NN (`weighted_knn_scores`) that solo-learn, lightly
  and VISSL report (k = 200 or 20, temperature 0.1 or 0.07) at each of `ks`, on device,
  `chunk` queries at a time (padded: one compilation); class-vote ties go to the smallest
  label."""
  ks = tuple(ks)
  if max(ks) > len(fit_x):
    raise ValueError(f"k={max(ks)} is larger than the {len(fit_x)} examples the k-NN is fit on")
  num_classes = int(max(fit_y.max(), query_y.max())) + 1
  bank, bank_labels = jnp.asarray(fit_x, jnp.float32), jnp.asarray(fit_y, jnp.int32)
  predictions = []
  for start in range(0, len(query_x), chunk):
    queries = query_x[start:start + chunk]
    count = len(queries)
    queries = np.pad(queries, ((0, chunk - count), (0, 0)))
    similarities, neighbours = _top_cosine_neighbours(bank, jnp.asarray(queries, jnp.float32),
                                                      max(ks))
    predictions.append(np.stack(jax.device_get(_weighted_predictions(
        similarities, neighbours, bank_labels, ks, float(temperature), num_classes)))[:, :count])
  correct = np.concatenate(predictions, axis=1) == query_y
  return {k: float(np.mean(row)) for k, row in zip(ks, correct)}


def linear_probe_accuracy(train_x, train_y, test_x, test_y, num_classes=10, l2=1e-4,
                          steps=300):
  """Multinomial logistic regression on frozen, standardised features (full-batch L-BFGS)."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_x = jnp.asarray((train_x - mean) / std, jnp.float32)
  test_x = jnp.asarray((test_x - mean) / std, jnp.float32)
  train_y = jnp.asarray(train_y)

  def objective(params):
    logits = jnp.matmul(train_x, params["w"], precision=losses.HIGHEST) + params["b"]
    return (optax.losses.softmax_cross_entropy_with_integer_labels(logits, train_y).mean()
            + l2 * jnp.sum(params["w"] ** 2))

  params = {"w": jnp.zeros((train_x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  @jax.jit
  def run(params):
    def body(_, carry):
      params, state = carry
      value, grad = value_and_grad(params, state=state)
      updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                     value_fn=objective)
      return optax.apply_updates(params, updates), state
    return jax.lax.fori_loop(0, steps, body, (params, solver.init(params)))[0]

  params = run(params)
  predictions = jnp.argmax(
      jnp.matmul(test_x, params["w"], precision=losses.HIGHEST) + params["b"], axis=1)
  return float(jnp.mean(predictions == jnp.asarray(test_y)))


def tsne_2d(features, seed=0):
  """2-D t-SNE of `features` with scikit-learn (PCA init, perplexity 30, or a third of the
  points where there are fewer than 91: scikit-learn needs fewer than the points)."""
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  perplexity = min(30.0, (len(features) - 1) / 3)
  return TSNE(n_components=2, init="pca", perplexity=perplexity,
              random_state=seed).fit_transform(features)
