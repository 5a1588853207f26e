"""JAX's persistent compilation cache in the user's cache directory, one folder per machine.

A repeated run (the same config, or an evaluation of a trained workdir) then loads
its programs instead of compiling them again. JAX's cache key holds the program,
the compile options, the devices and the jax/jaxlib versions, but not the host
CPU's instruction set, for which XLA:CPU compiles; a home directory shared by
different machines would hand one machine's CPU programs to another. Each
machine kind (platform, device kind, the CPU's feature flags) gets a folder of
its own.

A compiled program is code that the process runs: whoever can write to the cache
can run code as its user (JAX's warning). The baselines' cache may be shared by
several users (its files are readable by all), the compiled programs are not: each
user has a folder (xla-<uid>) that must be theirs alone, or the cache stays off.
"""

import hashlib
import logging
import os
import platform
import stat

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from cl_jax import evaluator

logger = logging.getLogger(__name__)

# Programs that compile faster than this are not written (JAX's default is 1 s; most of
# the evaluation's programs compile in less, and together they take seconds).
MIN_COMPILE_SECONDS = 0.1


def _cpu_features():
  """The host CPU's model and feature flags (Linux's /proc/cpuinfo), or what `platform`
  says elsewhere."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return f"{platform.machine()} {platform.processor()}"


def machine_fingerprint(devices=None):
  """A short name for what a compiled program depends on beyond JAX's own key: the
  platform, the device kind and the host CPU."""
  devices = devices or jax.local_devices()
  described = f"{devices[0].platform}|{devices[0].device_kind}|{_cpu_features()}"
  return f"{devices[0].platform}-{hashlib.sha256(described.encode()).hexdigest()[:16]}"


def cache_path(config, devices=None):
  """<cache dir>/xla-<uid>/<machine>: a folder of this user's own inside a cache dir that
  several users may share."""
  user = f"xla-{os.getuid()}" if hasattr(os, "getuid") else "xla"
  return os.path.join(os.path.abspath(evaluator.cache_dir(config)), user,
                      machine_fingerprint(devices))


def unsafe_reason(path):
  """Why a folder of compiled programs must not be used (None if it may): it is a link,
  another user owns it, or others may write to it (POSIX only: elsewhere folders report
  no owner or modes worth reading)."""
  info = os.lstat(path)
  if stat.S_ISLNK(info.st_mode):
    return f"{path} is a symbolic link"
  if not hasattr(os, "getuid"):
    return None
  if info.st_uid != os.getuid():
    return f"{path} belongs to another user"
  if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
    return f"others may write to {path}"
  return None


def _warn_off(reason):
  if jax.process_index() == 0:
    logger.warning("compilation cache off: %s (--config.compilation_cache=False silences "
                   "this; or make the folder yours alone, e.g. chmod go-w, or name another "
                   "with --config.cache_dir or $CL_JAX_CACHE)", reason)


def enable(config):
  """Points JAX's persistent compilation cache at `cache_path(config)` if
  config.compilation_cache is set; returns the folder in use (None if off). A cache folder
  already set through JAX's own setting (JAX_COMPILATION_CACHE_DIR) is kept unless
  config.cache_dir or $CL_JAX_CACHE names one. Call it after jax.distributed's initialisation (the folder
  names the devices)."""
  if not config.compilation_cache:
    return None
  if jax.config.jax_compilation_cache_dir and not (config.cache_dir
                                                  or os.environ.get(evaluator.CACHE_ENV)):
    return jax.config.jax_compilation_cache_dir
  path = cache_path(config)
  try:
    os.makedirs(os.path.dirname(os.path.dirname(path)), exist_ok=True)  # the shared cache dir
    for folder in (os.path.dirname(path), path):  # .../xla-<uid> and its machine's: ours
      os.makedirs(folder, mode=0o700, exist_ok=True)
      reason = unsafe_reason(folder)
      if reason:  # made by someone else, or opened up since: its programs would run as us
        _warn_off(reason)
        return None
  except OSError as e:  # a read-only or missing home, a file in the way: run uncached
    _warn_off(f"{path} cannot be made ({e})")
    return None
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  if jax.config.jax_compilation_cache_dir != path:
    jax_cache.set_cache_dir(path)
    # JAX opens its cache folder once; a process that already used another (a notebook
    # that enabled one before) would go on writing there.
    jax_cache.reset_cache()
  return path
