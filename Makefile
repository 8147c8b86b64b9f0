VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
ALLOC_STAMP := $(VENV)/.allocator

.PHONY: install install-dev train test bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch is installed first at the pinned CPU build so that no dependency pulls a multi-GB CUDA wheel.
$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e .
	touch $(STAMP)

# tcmalloc, which the console scripts preload (m3lit/cli/launch.py): where the system has none, Debian's package is
# unpacked into the virtualenv's lib/ (apt-get download + dpkg -x, no root); elsewhere glibc's malloc stays.
# Tried once (rm $(ALLOC_STAMP) to try again).
TCMALLOC_DEBS := libtcmalloc-minimal4t64 libtcmalloc-minimal4
$(ALLOC_STAMP): $(STAMP)
	@if $(PY) -c "import sys; from m3lit.cli.launch import find_allocator as f; sys.exit(f('tcmalloc') is None)"; then \
	  echo "tcmalloc: found"; \
	elif command -v apt-get >/dev/null && command -v dpkg >/dev/null; then \
	  echo "tcmalloc: fetching Debian's libtcmalloc-minimal4 into $(VENV)/lib"; tmp=$$(mktemp -d); \
	  for deb in $(TCMALLOC_DEBS); do (cd $$tmp && timeout 60 apt-get download -q -o Acquire::Retries=0 \
	    -o Acquire::http::Timeout=10 $$deb >/dev/null 2>&1) && break; done; \
	  if (cd $$tmp && dpkg -x *.deb x) 2>/dev/null && cp -P $$tmp/x/usr/lib/*/libtcmalloc_minimal.so.4* $(VENV)/lib/; \
	  then echo "tcmalloc: unpacked"; \
	  else echo "tcmalloc: not available (apt install libtcmalloc-minimal4); glibc's malloc is used"; fi; \
	  rm -rf $$tmp; \
	else echo "tcmalloc: not available; glibc's malloc is used"; fi
	@touch $@

$(DEV_STAMP): $(ALLOC_STAMP)
	$(PIP) install -q -e ".[dev]"
	touch $(DEV_STAMP)

install: $(ALLOC_STAMP)
install-dev: $(DEV_STAMP)

# The main job on the embedded default: tiny model, bundled synthetic multilingual data, CPU, W&B offline.
# Extra Hydra overrides: make train ARGS="trainer.max_steps=600 teacher=uniform"
train: $(ALLOC_STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/m3lit-train $(ARGS)

# The whole test suite (PYTEST_ARGS="-k losses" to select), in TEST_WORKERS processes (pytest-xdist; one test file
# per process at a time, one torch thread each).
TEST_WORKERS ?= 2
test: $(DEV_STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun wandb .m3lit_cache
