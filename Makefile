# The two commands a new user needs: `make demo` (the main job, offline) and `make test`.
.PHONY: setup demo test lint format bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/tinyshot demo --out runs/demo

test: setup
	.venv/bin/python -m pytest -n 2 -q

lint: setup
	.venv/bin/ruff check src tests experiments && .venv/bin/ruff format --check src tests experiments

format: setup
	.venv/bin/ruff format src tests experiments && .venv/bin/ruff check --fix src tests experiments
