# samfleet developer entry points.  `make demo`, `make lint` and `make test` each set up everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision (needed by transformers' SAM3 image processor) exists on this project's package
# mirror only as the torch 2.14.1 / torchvision 0.29.1 pair; it runs on CPU and on CUDA GPUs.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Two pytest-xdist workers, each module (or class) one unit of work, the longest first (tests/conftest.py):
# most of the long tests wait on timers, so they overlap with the rest.  XDIST= runs in one process.
XDIST ?= -n 2 --dist loadscope --no-loadscope-reorder
# FiftyOne's database for the plugin tests (see .ci/fetch-mongod for why it is fetched by hand).
MONGOD := .cache/mongodb/bin/mongod

.PHONY: install demo serve lint test test-fast gpu-check clean chromium

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/samfleet demo

serve: install
	$(VENV)/bin/samfleet serve

# What is checked, and how, is configured in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: install
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/ruff check
	$(PY) -m mypy

test: install $(MONGOD) chromium
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The tests that start no Ray service (pyproject: the `service` marker): about a minute.
test-fast: install $(MONGOD)
	$(PY) -m pytest -m "not service" $(XDIST) $(PYTEST_ARGS)

# One command for a GPU machine (benchmarks/gpu_check.py): full-size random-weight SAM3 served in
# bfloat16, served == in-process, throughput, clicks, video, cold start.  CI runs it with
# MODEL=tiny on the CPU so it is known to work.
MODEL ?=
gpu-check: install
	$(PY) benchmarks/gpu_check.py $(if $(MODEL),--model $(MODEL))

# The App tests drive Debian's Chromium (Playwright never downloads a browser here).
chromium:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

$(MONGOD): .ci/fetch-mongod
	bash .ci/fetch-mongod $(abspath $(dir $@)/..)

clean:
	rm -rf $(VENV) .cache out .pytest_cache .mypy_cache .ruff_cache
