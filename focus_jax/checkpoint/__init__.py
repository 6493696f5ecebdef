"""Checkpoints: HF/GGUF <-> params pytree (hf.py) and Orbax save/restore (orbax.py)."""
from focus_jax.checkpoint.hf import export_hf, load_hf, read_focus_config
from focus_jax.checkpoint.layout import CheckpointError
from focus_jax.checkpoint.orbax import load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "export_hf", "load_checkpoint", "load_hf", "read_focus_config",
           "save_checkpoint"]
