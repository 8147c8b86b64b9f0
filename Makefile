VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev train test bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch is installed first at the pinned CPU build so that no dependency pulls a multi-GB CUDA wheel.
$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP) install -q -e ".[dev]"
	touch $(DEV_STAMP)

install: $(STAMP)
install-dev: $(DEV_STAMP)

# The main job on the embedded default: tiny model, bundled synthetic multilingual data, CPU, W&B offline.
# Extra Hydra overrides: make train ARGS="trainer.max_steps=600 teacher=uniform"
train: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/m3lit-train $(ARGS)

# The whole test suite (PYTEST_ARGS="-k losses" to select), in TEST_WORKERS processes (pytest-xdist; one test file
# per process at a time, one torch thread each).
TEST_WORKERS ?= 2
test: $(DEV_STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun wandb .m3lit_cache
