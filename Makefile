# Two commands: `make demo` (set up + train the offline demo reward model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all test-fast setup lint clean

$(BIN)/rmray: pyproject.toml tests/frameworks.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # CPU wheel first; an unpinned torch pulls a CUDA build
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps -r tests/frameworks.txt   # the RL frameworks' own client code, for tests
	$(BIN)/pip download -q --no-deps trl==0.19.1 -d $(VENV)/reference  # its PRMTrainer.tokenize_row, read by a test
	touch $@

setup: $(BIN)/rmray

demo: setup
	./scripts/in-loopback-ns $(BIN)/rmray demo jobs/configs/demo.yaml

# The tests use local model folders only: HF_HUB_OFFLINE makes a stray hub lookup fail at once.
test: setup
	./scripts/ensure-chromium
	HF_HUB_OFFLINE=1 ./scripts/in-loopback-ns $(BIN)/python -m pytest -q --durations=25 -m "not extended" tests

test-all: setup   # test, plus the end-to-end runs marked extended (about 3 more minutes on 2 cores)
	./scripts/ensure-chromium
	HF_HUB_OFFLINE=1 ./scripts/in-loopback-ns $(BIN)/python -m pytest -q --durations=25 tests

test-fast: setup   # the inner loop: every test that needs no Ray cluster
	./scripts/ensure-chromium
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not ray and not slow" tests

lint: setup
	$(BIN)/ruff check rmray jobs tests benchmarks

clean:
	rm -rf $(VENV) outputs
