PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-numerics reproduce lint bench docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[experiments,mnist,bench,dev,docs]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# the numerical tests under every OpenBLAS kernel of this CPU, 1 and 2 threads, and nudges
test-numerics: $(STAMP)
	PYTHON=$(BIN)/python scripts/numerics_matrix.sh

reproduce: $(STAMP)
	$(BIN)/structdrop reproduce synthetic --out results
	$(BIN)/structdrop reproduce deep --out results
	$(BIN)/structdrop reproduce deep --dataset mnist --image-size 16 --epochs 100 --out results

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_objectives.py
	$(BIN)/python benchmarks/bench_optimum.py
	$(BIN)/python benchmarks/bench_sgd.py
	$(BIN)/python benchmarks/bench_layers.py
	$(BIN)/python benchmarks/bench_deep.py

# the documentation site (mkdocs.yml) -> site/; strict: any warning fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
