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

# All tests on TensorFlow, then the model tests again on JAX; whole test files
# are spread over TEST_WORKERS pytest-xdist workers (slow files first).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations 15
test: venv
	$(MAKE) test-tf
	$(MAKE) test-jax

test-tf: venv
	KERAS_BACKEND=tensorflow $(PYTEST) tests

test-jax: venv
	KERAS_BACKEND=jax $(PYTEST) -m model tests

lint: venv
	$(BIN)/ruff check brt_keras trainers data tests benchmarks
	$(BIN)/ruff format --check brt_keras trainers data tests benchmarks

# The main job: build the offline books corpus, train a small BRT on CPU,
# evaluate, sample, export. Override e.g. `make train TRAIN_STEPS=100`.
RUN_DIR ?= runs/brt_mini
DATA_DIR ?= artifacts/data
TRAIN_STEPS ?= 500
TRAIN_FLAGS ?= --preset rec_fixed_skip --size mini --batch_size 8 --warmup_steps 100 \
	--checkpoint_every 100 --chunk_steps 100
train: venv
	$(BIN)/python -m data.fetch_corpora --out $(DATA_DIR)/raw --corpus books
	$(BIN)/python -m data.build --corpus books --raw_dir $(DATA_DIR)/raw --data_dir $(DATA_DIR)/tfds
	$(BIN)/python -m trainers.train --model_dir $(RUN_DIR) --corpus books \
		--data_dir $(DATA_DIR)/tfds --steps $(TRAIN_STEPS) $(TRAIN_FLAGS)
	$(BIN)/python -m trainers.evaluate --model_dir $(RUN_DIR) --batch_size 8 --max_segments 200
	$(BIN)/python -m trainers.generate --model_dir $(RUN_DIR) --prompt "It is a truth" \
		--max_new_tokens 300 --sampler top_p --seed 0
	$(BIN)/python -m trainers.export --model_dir $(RUN_DIR)
	@echo
	@echo "Done. Everything is under $(RUN_DIR):"
	@echo "  config.json            resolved configuration"
	@echo "  model.keras            trained model (keras.saving.load_model)"
	@echo "  checkpoints/           resumable checkpoints (re-run to continue)"
	@echo "  loss_curve.png         training loss"
	@echo "  tensorboard/           tensorboard --logdir $(RUN_DIR)/tensorboard"
	@echo "  eval_test.json         bits/token, bits/byte, word perplexity"
	@echo "  export/saved_model     SavedModel (serve, stream, initial_state)"
	@echo "  corpus: $(DATA_DIR)/tfds"

clean:
	rm -rf $(VENV) runs artifacts

# Benchmarks (benchmarks/README.md): tables on stdout, JSON + PNG in
# benchmarks/results/. `make bench BENCH_FLAGS=--quick` for a smoke run.
BENCH_FLAGS ?=
BENCH_SCRIPTS := step_time step_memory utilisation attention_chunks scaling generation decoding quant_matvec jax_vs_tf peer_pytorch \
	long_range_recall memory_value corpus_ranking profile_step data_throughput
bench: venv
	for s in $(BENCH_SCRIPTS); do \
		PYTHONPATH=. $(BIN)/python -m benchmarks.$$s $(BENCH_FLAGS) || exit 1; \
	done
