# brt_keras: `make train` runs the main job, `make test` the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-tf test-jax lint train bench clean

venv: $(STAMP)
$(STAMP): requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

# All tests on TensorFlow, then the model tests again on JAX.
test: venv
	$(MAKE) test-tf
	$(MAKE) test-jax

test-tf: venv
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest -q tests

test-jax: venv
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q -m model tests

lint: venv
	$(BIN)/ruff check brt_keras trainers data tests benchmarks
	$(BIN)/ruff format --check brt_keras trainers data tests benchmarks

clean:
	rm -rf $(VENV) runs artifacts
