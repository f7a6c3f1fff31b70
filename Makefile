# The two commands of the README. Each installs what it needs first.
# `make test`: ruff, the import contracts (pyproject.toml: [tool.importlinter]), then the suite.
.PHONY: demo test stress setup

demo: setup
	.venv/bin/daetui demo

test: setup
	.venv/bin/ruff check daetui testkit tests bench
	.venv/bin/lint-imports --no-cache
	.venv/bin/python -m pytest -q

# The load and fault suite alone, its figures printed (it also runs within `make test`).
stress: setup
	.venv/bin/python -m pytest -q -rA tests/stress

setup:
	./scripts/setup.sh
