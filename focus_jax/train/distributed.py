"""Multi-process start-up: `jax.distributed.initialize` only when asked or detected.

Explicit flags (coordinator address, process count and id) win. Otherwise a
cluster environment that JAX detects by itself (SLURM with several tasks,
Cloud TPU pods, Open MPI) triggers a plain `jax.distributed.initialize()`.
On one host with none of these, nothing is initialised.
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def cluster_detected() -> str | None:
  """Name of a multi-process environment JAX can initialise from, or None."""
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
    return "slurm"
  if os.environ.get("OMPI_COMM_WORLD_SIZE", "1") not in ("", "1"):
    return "openmpi"
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or \
     os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"
  return None


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Initialises jax.distributed when flags or the environment call for it."""
  if coordinator:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  else:
    env = cluster_detected()
    if env is None:
      return False
    log.info("initialising jax.distributed from the %s environment", env)
    jax.distributed.initialize()
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
