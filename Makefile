# focus_jax: make demo | make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

.PHONY: venv assets test demo train-smollm2 eval-smollm2

venv: $(STAMP)

# Re-installs only when requirements.txt is newer than the stamp.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

assets: venv
	$(PY) -m focus_jax.assets

test: venv
	$(PY) -m pytest -q tests

demo: venv assets
	PYTHON=$(PY) bash launch/demo.sh

# FocusLLM training of SmolLM2's candidate projections (configs/smollm2_memory.py).
# Resumable: stop it (Ctrl-C saves a checkpoint) and run it again to continue.
# Writes out/train_smollm2/model (launch.generate --mode=focus reads it).
TRAIN_SMOLLM2 := out/train_smollm2

out/smollm2/model_config.json: | assets
	$(PY) -m launch.convert --hf_model="$$($(PY) -c 'from focus_jax import assets; print(assets.smollm2_gguf())')" --out=out/smollm2

train-smollm2: venv out/smollm2/model_config.json
	nice -n 19 $(PY) -m launch.train --config=configs/smollm2_memory.py --workdir=$(TRAIN_SMOLLM2)

# Held-out losses with and without the memory at every checkpoint (appends to heldout.jsonl).
eval-smollm2: venv
	nice -n 19 $(PY) bench/memory_eval.py --workdir=$(TRAIN_SMOLLM2) --samples=16
