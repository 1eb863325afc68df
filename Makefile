# Two commands do everything on a fresh clone: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench venv clean chromium

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Local development secrets are generated once into .env.local (never committed);
# the process itself has no defaults for secrets.
.env.local:
	$(BIN)/python -c "import secrets;print(f'STRIPE_WEBHOOK_SECRET=whsec_{secrets.token_hex(24)}\nPLATFORM_WEBHOOK_SECRET={secrets.token_hex(24)}\nADMIN_TOKEN={secrets.token_urlsafe(24)}')" > .env.local
	@echo "generated development secrets in .env.local"

run: $(STAMP) .env.local
	set -a && . ./.env.local && set +a && $(BIN)/coursepipe db upgrade && exec $(BIN)/coursepipe serve

# most tests wait on subprocesses, sockets and databases: three processes keep two cores busy
PYTEST_WORKERS ?= 3

# Python may cache bytecode here even where the machine sets PYTHONDONTWRITEBYTECODE (__pycache__ is ignored by
# git): the suite starts hundreds of Python processes (pytest's workers, CLI commands, gunicorn and Dramatiq
# processes), and without the cache each compiles the project's modules, and pytest rewrites its tests, again
test: $(STAMP) chromium
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# the dashboard's browser test drives Debian's chromium (Playwright's own browser download is never used)
chromium:
	command -v chromium >/dev/null || apt-get install -y --no-install-recommends chromium \
		|| (apt-get update && apt-get install -y --no-install-recommends chromium) \
		|| echo "could not install chromium: the browser test skips (and fails with CI=true)"

bench: $(STAMP)
	command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache coursepipe.db
