# Two commands matter: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv with a Python >= 3.12 found on PATH or under `pyenv root`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint docs docs-examples clean

$(STAMP): pyproject.toml
	@bash scripts/make_venv.sh $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitools demo

test: $(STAMP)
	$(VENV)/bin/ruff check vitools tests examples
	$(PY) -m pytest -q -ra -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py
	$(PY) benchmarks/bench_posteriordb.py
	$(PY) benchmarks/bench_verdicts.py
	$(PY) benchmarks/bench_convergence.py
	$(PY) benchmarks/bench_next_steps.py

# The documentation site (mkdocs, material theme, mkdocstrings) into site/; --strict fails on a broken
# link, image, snippet or API reference. It includes the examples' outputs under docs/generated/,
# which are committed; docs-examples reruns the examples that write them (a few minutes) and moves
# the folders they also write (a vt.report, a user's files; not committed) to vitools-report/.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

docs-examples: $(STAMP)
	$(PY) examples/kl_vs_cross_entropy.py
	$(PY) examples/mode_seeking_vs_mass_covering.py
	$(PY) examples/eight_schools.py
	$(PY) examples/distill_nuts.py
	$(PY) examples/large_data.py
	$(PY) examples/your_own_model.py
	rm -rf vitools-report/eight_schools_report vitools-report/your_own_model && mkdir -p vitools-report
	mv docs/generated/eight_schools_report docs/generated/your_own_model vitools-report/

lint: $(STAMP)
	$(VENV)/bin/ruff check vitools tests benchmarks examples
	$(VENV)/bin/ruff format --check vitools tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache site
