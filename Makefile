# The two commands of the README. Each installs what it needs first.
# `make test`: ruff, the import contracts (pyproject.toml: [tool.importlinter]), then the suite.
.PHONY: demo test stress bench setup

demo: setup
	.venv/bin/daetui demo

test: setup
	.venv/bin/ruff check daetui testkit tests bench
	.venv/bin/lint-imports --no-cache
	.venv/bin/python -m pytest -q

# The load and fault suite alone, its figures printed (it also runs within `make test`).
stress: setup
	.venv/bin/python -m pytest -q -rA tests/stress

# Every benchmark in turn (root, the lab; 10-15 minutes), one table of their figures printed and
# written to bench/RESULTS.md. BENCH_ARGS=--quick: a smoke run of a few minutes.
bench: setup
	.venv/bin/python bench/all.py $(BENCH_ARGS)

setup:
	./scripts/setup.sh
