# focus_jax: make demo | make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

.PHONY: venv assets test demo

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
