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

.PHONY: install demo serve lint test test-fast test-fleet test-lower-bounds gpu-check clean system-packages

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

test: install $(MONGOD) system-packages
	$(PY) -m pytest -m "not fleet" $(XDIST) $(PYTEST_ARGS)

# The fleet scenarios (pyproject: the `fleet` marker), mostly waiting on the fleet (replicas
# scaling, draining, dying, a node coming back): autoscaling, rollout, downscale and node loss with
# work in flight, a replica or a whole service killed mid-run, routing over two replicas.  Each
# takes minutes or a Ray of its own.  CI runs them after `make test`.
test-fleet: install $(MONGOD)
	$(PY) -m pytest -m fleet $(XDIST) $(PYTEST_ARGS)

# The tests that start no Ray service (pyproject: the `service` marker): about a minute.
test-fast: install $(MONGOD)
	$(PY) -m pytest -m "not service" $(XDIST) $(PYTEST_ARGS)

# The lowest releases pyproject.toml admits for the libraries whose APIs the service relies on,
# laid over the installed (newest admitted) ones, for the tests that exercise those APIs: model
# loading, served == in-process (images, points, video), back-pressure, the embedding cache.
# transformers 5.17 needs a huggingface-hub 1.x.  CI runs it after `make test`.
LOWER_BOUNDS := ray[serve]==2.58.0 transformers==5.17.0 huggingface-hub==1.33.0
LOWER_DIR := .cache/lower-bounds
LOWER_TESTS := tests/test_model_loading.py tests/test_upsampling.py tests/test_served_equals_inprocess.py \
	tests/test_video.py tests/test_protected_service.py tests/test_embedding_cache.py
test-lower-bounds: install $(MONGOD)
	$(PY) -m pip install -q --no-deps --target $(LOWER_DIR) $(LOWER_BOUNDS)
	PYTHONPATH=$(abspath $(LOWER_DIR)) $(PY) -m pytest $(XDIST) $(PYTEST_ARGS) $(LOWER_TESTS) \
		-p no:cacheprovider --lower-bounds "$(LOWER_BOUNDS)"

# One command for a GPU machine (benchmarks/gpu_check.py): full-size random-weight SAM3 served in
# bfloat16, served == in-process, throughput, clicks, video, cold start.  CI runs it with
# MODEL=tiny on the CPU so it is known to work.
MODEL ?=
gpu-check: install
	$(PY) benchmarks/gpu_check.py $(if $(MODEL),--model $(MODEL))

# The App tests drive Debian's Chromium (Playwright never downloads a browser here); FiftyOne's
# apply_model reads each video's metadata with ffmpeg's ffprobe before the model sees it.
SYSTEM_PACKAGES := chromium ffmpeg
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

$(MONGOD): .ci/fetch-mongod
	bash .ci/fetch-mongod $(abspath $(dir $@)/..)

clean:
	rm -rf $(VENV) .cache out .pytest_cache .mypy_cache .ruff_cache
