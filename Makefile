# The README's two commands: `make run` (the main job on the embedded default) and `make test`. Both set up .venv first.
PY := .venv/bin/python

.PHONY: setup run online imdb lint test test-fast
setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/dpo-ray train $(ARGS)

online: setup
	.venv/bin/dpo-ray online $(ARGS)

imdb: setup
	.venv/bin/dpo-ray online +experiment=imdb_sentiment $(ARGS)

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# Whole modules on TEST_WORKERS processes (a module's tests share one Ray cluster); TEST_WORKERS=0: all in one.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(ARGS)
