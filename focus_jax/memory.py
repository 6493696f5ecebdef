"""How much memory there is, and refusing a size that cannot fit before it is allocated.

  check_bytes(n, "the KV cache of 10 layers")        # ValueError when n > physical RAM
  available_bytes()                                  # (bytes, "available host memory")

Estimates are checked against the machine's physical RAM (os.sysconf
SC_PHYS_PAGES) for host arrays, and against what the accelerator (or the host,
on a CPU) has free for decoding; a refusal names the estimate and the limit.
"""
from __future__ import annotations

import os

GIB = 2**30


def physical_bytes() -> int:
  """This machine's RAM."""
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_bytes() -> tuple[int, str]:
  """(bytes free for arrays, where): the first device's free memory, else the host's."""
  import jax
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"{dev.platform} memory"
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024, "available host memory"
  except (OSError, KeyError, ValueError):
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free host memory"


def gib(n: float) -> str:
  return f"{n / GIB:,.1f} GiB" if n < 2**50 else f"{n:.3g} bytes"


def check_bytes(needed: int, what: str, hint: str = "", limit: int | None = None,
                where: str = "this machine's RAM") -> None:
  """Raises ValueError `{what} need(s) X GiB, more than the Y GiB of {where}{hint}` when
  needed exceeds limit (default: physical RAM)."""
  limit = physical_bytes() if limit is None else limit
  if needed > limit:
    raise ValueError(f"{what} would need {gib(needed)}, more than the {gib(limit)} of "
                     f"{where}{'; ' + hint if hint else ''}")
