"""Training configs (ml_collections): `--config=configs/NAME.py` or, for launch.train and
launch.plan, `--config=NAME` (shipped with the installed package)."""
