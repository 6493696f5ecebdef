"""FocusLLM training: the jitted step (step.py), optimiser (optim.py), Orbax
checkpoints (checkpoints.py), metrics (metrics.py), the loop (loop.py) and
the multi-process start-up (distributed.py). Entry point: launch/train.py."""
