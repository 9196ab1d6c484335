# Two commands matter: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv with a Python >= 3.12 found on PATH or under `pyenv root`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	@bash scripts/make_venv.sh $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitools demo

test: $(STAMP)
	$(VENV)/bin/ruff check vitools tests examples
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py
	$(PY) benchmarks/bench_posteriordb.py
	$(PY) benchmarks/bench_verdicts.py
	$(PY) benchmarks/bench_convergence.py
	$(PY) benchmarks/bench_next_steps.py

lint: $(STAMP)
	$(VENV)/bin/ruff check vitools tests benchmarks examples
	$(VENV)/bin/ruff format --check vitools tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache
