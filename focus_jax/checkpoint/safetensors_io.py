"""Safetensors reading (lazy, tensor by tensor) and streaming writing.

The writer lays out the header from shapes and dtypes first, then writes each
tensor as it is produced, so exporting never holds a second copy of the model.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from focus_jax.checkpoint.layout import CheckpointError, check_shape

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
           np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float64): "F64",
           np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}


class SafetensorsReader(contextlib.AbstractContextManager):
  """Name -> tensor access over one or more safetensors files (headers read eagerly)."""

  def __init__(self, files: Iterable[Path]):
    self._stack = contextlib.ExitStack()
    self._where: dict[str, object] = {}
    self._file_of: dict[str, Path] = {}
    self.metadata: dict[str, str] = {}
    try:
      for path in files:
        handle = self._stack.enter_context(_open(path))
        self.metadata.update(handle.metadata() or {})
        for name in handle.keys():
          self._where[name] = handle
          self._file_of[name] = Path(path)
    except BaseException:
      self._stack.close()
      raise

  def __exit__(self, *exc):
    self._stack.close()

  def __contains__(self, name: str) -> bool:
    return name in self._where

  @property
  def names(self) -> list[str]:
    return list(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle(name).get_slice(name).get_shape())

  def get(self, name: str, expected_shape=None) -> np.ndarray:
    """The tensor `name`; checks its shape first when expected_shape is given."""
    handle = self._handle(name)
    if expected_shape is not None:
      check_shape(name, self.shape(name), expected_shape)
    try:
      return handle.get_tensor(name)
    except SafetensorError as e:
      raise CheckpointError(f"{self._file_of[name]}: cannot read tensor {name} ({e}); "
                            "is the file truncated?") from None

  def _handle(self, name: str):
    if name not in self._where:
      raise CheckpointError(f"missing tensor {name} in the checkpoint")
    return self._where[name]


def _open(path: Path):
  if not Path(path).is_file():
    raise CheckpointError(f"weights file {path} not found")
  try:
    return safe_open(str(path), framework="numpy")
  except SafetensorError as e:
    raise CheckpointError(f"{path}: not a valid safetensors file ({e}); "
                          "is it truncated or corrupt?") from None


def write_safetensors(path: Path, items: Iterable[tuple[str, Callable[[], np.ndarray], tuple, np.dtype]],
                      metadata: dict[str, str] | None = None,
                      log: Callable[[str], None] = lambda msg: None) -> None:
  """Writes (name, thunk, shape, dtype) items to `path`, one tensor in memory at a time."""
  items = list(items)
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, _, shape, dtype in items:
    dtype = np.dtype(dtype)
    if dtype not in _DTYPES:
      raise CheckpointError(f"tensor {name}: dtype {dtype} cannot be written to safetensors")
    if name in header:
      raise CheckpointError(f"duplicate tensor name {name}")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _DTYPES[dtype], "shape": [int(s) for s in shape],
                    "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for n, (name, thunk, shape, dtype) in enumerate(items):
      x = np.ascontiguousarray(thunk())
      if x.shape != tuple(shape) or x.dtype != np.dtype(dtype):
        raise CheckpointError(f"tensor {name}: produced {x.dtype}{list(x.shape)}, "
                              f"declared {np.dtype(dtype)}{list(shape)}")
      f.write(x.reshape(-1).view(np.uint8).data)
      if (n + 1) % 64 == 0 or n + 1 == len(items):
        log(f"wrote {n + 1}/{len(items)} tensors to {Path(path).name}")
