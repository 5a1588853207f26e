"""The persistent compilation cache: written where the config says, one folder per machine,
read back by the next process, and enabled even in a process that compiled before."""

import json
import os
import subprocess
import sys
import textwrap

import jax

from cl_jax import compilation_cache
from cl_jax import default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A process that compiles something first (as a notebook would have), then enables the cache
# in each folder of argv[1:] in turn ("" = the default), compiling after each a program slow
# enough to be written (20 dependent matmuls: ~0.5 s here), and counts the cache hits JAX
# reports; prints the folders it used, the hits and the last result.
PROGRAM = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from cl_jax import compilation_cache, default_config
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None)
    jax.jit(lambda x: x + 1)(1.0).block_until_ready()  # compiled before the cache is enabled
    paths = []
    for index, cache_dir in enumerate(sys.argv[1:]):
      config = default_config.get_config()
      config.cache_dir = cache_dir
      paths.append(compilation_cache.enable(config))
      # Every program written, whatever this machine's compile times (a fast one might
      # compile `slow` under the 0.1 s threshold, a loaded one the small ones above it).
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

      @jax.jit
      def slow(x):
        for i in range(20):
          x = jnp.tanh(x @ x) * (i + 1 + index)  # another program in each folder
        return x
      value = slow(jnp.eye(8) / 2)
    print(json.dumps({"paths": paths, "hits": len(hits), "value": value.tolist()}))
""")


def run_program(*cache_dirs, **env):
  proc = subprocess.run([sys.executable, "-c", PROGRAM, *cache_dirs], capture_output=True,
                        text=True, cwd=ROOT, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", **env))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_next_process_loads_what_the_first_compiled(tmp_path):
  first = run_program(str(tmp_path))
  [path] = first["paths"]
  assert path.startswith(os.path.join(str(tmp_path), f"xla-{os.getuid()}", "cpu-"))
  written = os.listdir(path)
  assert written and first["hits"] == 0
  second = run_program(str(tmp_path))
  assert second["paths"] == [path]
  assert second["hits"] >= 1 and second["value"] == first["value"]
  assert sorted(os.listdir(path)) == sorted(written)  # nothing new to write
  for folder in (path, os.path.dirname(path)):  # compiled programs: this user's alone
    assert os.stat(folder).st_mode & 0o077 == 0


def test_a_process_that_used_one_folder_moves_to_the_next(tmp_path):
  """JAX opens its cache folder once: without a reset, the second folder stays empty."""
  first, second = str(tmp_path / "a"), str(tmp_path / "b")
  paths = run_program(first, second)["paths"]
  assert [p.startswith(d) for p, d in zip(paths, (first, second))] == [True, True]
  assert os.listdir(paths[0]) and os.listdir(paths[1])


def test_jaxs_own_cache_setting_is_kept_unless_a_folder_is_named(tmp_path):
  """A user's JAX_COMPILATION_CACHE_DIR (and their threshold: here 0 s, so that the test's
  program is written) stand when no cl_jax cache folder is named."""
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  environment = {k: v for k, v in os.environ.items() if k != "CL_JAX_CACHE"}
  proc_env = dict(environment, JAX_PLATFORMS="cpu", HOME=str(tmp_path / "home"), **env)
  proc = subprocess.run([sys.executable, "-c", PROGRAM, ""], capture_output=True, text=True,
                        cwd=ROOT, timeout=300, env=proc_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["paths"] == [str(tmp_path / "jax")]
  assert os.listdir(tmp_path / "jax")
  named = run_program(str(tmp_path / "ours"), **env)["paths"]  # config.cache_dir wins
  assert named[0].startswith(str(tmp_path / "ours"))


def test_a_folder_others_may_write_to_is_not_used(tmp_path):
  """Whoever can write to the cache can run code in the process: a world-writable folder
  of compiled programs (or one of another user's) leaves the cache off."""
  folder = tmp_path / f"xla-{os.getuid()}"
  os.makedirs(folder)
  os.chmod(folder, 0o777)
  config = default_config.get_config()
  config.cache_dir = str(tmp_path)
  before = jax.config.jax_compilation_cache_dir
  assert compilation_cache.enable(config) is None
  assert jax.config.jax_compilation_cache_dir == before
  assert compilation_cache.unsafe_reason(str(folder)).startswith("others may write")


def test_a_cache_dir_that_cannot_be_made_leaves_the_run_uncached(tmp_path):
  (tmp_path / "file").write_text("in the way")
  config = default_config.get_config()
  config.cache_dir = str(tmp_path / "file")
  before = jax.config.jax_compilation_cache_dir
  assert compilation_cache.enable(config) is None
  assert jax.config.jax_compilation_cache_dir == before


def test_off_leaves_jax_as_it_was(tmp_path):
  config = default_config.get_config()
  config.compilation_cache, config.cache_dir = False, str(tmp_path)
  before = jax.config.jax_compilation_cache_dir
  assert compilation_cache.enable(config) is None
  assert jax.config.jax_compilation_cache_dir == before and not os.listdir(tmp_path)


def test_each_cpu_gets_a_folder_of_its_own(monkeypatch):
  """The same platform and device kind on a CPU with other feature flags (a home directory
  shared by two machines) must not share programs: XLA:CPU compiles for the host's flags."""
  path = compilation_cache.machine_fingerprint()
  assert compilation_cache.machine_fingerprint() == path
  monkeypatch.setattr(compilation_cache, "_cpu_features",
                      lambda: "flags\t\t: fpu sse sse2\n")
  other = compilation_cache.machine_fingerprint()
  monkeypatch.setattr(compilation_cache, "_cpu_features",
                      lambda: "flags\t\t: fpu sse sse2 avx512f\n")
  assert len({path, other, compilation_cache.machine_fingerprint()}) == 3


def train_in_a_fresh_process(data_dir, workdir, cache_dir):
  """The README's command on 256 images with the cache on (the default); JAX logs each
  cache hit (JAX_LOG_COMPILES). Returns (results.json, the number of hits)."""
  proc = subprocess.run(
      [sys.executable, "-m", "cl_jax.train", "--config", "configs/mnist.py", "--workdir",
       workdir, f"--config.data_dir={data_dir}", "--config.progress_bar=False",
       "--config.max_train_examples=256", "--config.batch_size=64", "--config.num_epochs=2",
       "--config.eval_every_epochs=0", "--config.evaluate_at_end=False"],
      capture_output=True, text=True, cwd=ROOT, timeout=600,
      env=dict(os.environ, CL_JAX_CACHE=cache_dir, JAX_LOG_COMPILES="1"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f), proc.stderr.count("Persistent compilation cache hit")


def test_a_run_from_the_cache_trains_bit_for_bit_as_one_that_compiled(mnist_data_dir, tmp_path):
  """The second run loads the train step (and the rest) that the first compiled and
  trains to the same parameters, bit for bit."""
  cache = str(tmp_path / "cache")
  first, first_hits = train_in_a_fresh_process(mnist_data_dir, str(tmp_path / "a"), cache)
  second, second_hits = train_in_a_fresh_process(mnist_data_dir, str(tmp_path / "b"), cache)
  assert second_hits > first_hits
  assert second["params_sha256"] == first["params_sha256"]
  assert second["final_loss"] == first["final_loss"]
