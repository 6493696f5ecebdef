"""absl entry points."""
