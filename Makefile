# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
# The suite's second database; PostgreSQL's own `postgres` database is only used to create
# and drop the throwaway `test_postgres` one.
POSTGRES_TEST_URL ?= postgres://postgres@127.0.0.1:5432/postgres

# The browser test (tests/e2e/test_browser.py) drives Debian's Chromium: installed here when missing,
# unless CHROMIUM_PATH names another one or SKIP_BROWSER_TESTS=1.
CHROMIUM := $(shell command -v chromium || command -v chromium-browser || echo /usr/bin/chromium)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BROWSER := $(if $(or $(CHROMIUM_PATH),$(filter 1,$(SKIP_BROWSER_TESTS))),,$(CHROMIUM))

.PHONY: setup migrate run test test-postgres lint check bench soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(RUNTIME_STAMP) $@

setup: $(RUNTIME_STAMP)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

migrate: setup
	$(PY) manage.py migrate --noinput

# Serves on SERVER_HOST:SERVER_PORT (127.0.0.1:5601) through uvicorn, as the Docker image does.
run: migrate
	$(PY) manage.py serve

# The whole suite on SQLite: needs Python, and Chromium for the browser test (installed above).
test: $(DEV_STAMP) $(BROWSER)
	$(PY) -m pytest

# The whole suite again on PostgreSQL (CI runs both; see .ci/run).
test-postgres: $(DEV_STAMP) $(BROWSER)
	DATABASE_URL=$(POSTGRES_TEST_URL) $(PY) -m pytest

# ruff: pycodestyle, pyflakes, import order and bugbear (pyproject.toml).
lint: $(DEV_STAMP)
	$(PY) -m ruff check .

check: lint
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null

# Throughput, added latency, 1,000 streams at once, history growth: prints figures (bench/chat_throughput.py).
bench: $(RUNTIME_STAMP)
	$(PY) -m bench.chat_throughput $(BENCH_ARGS)

# 200 clients for 2 minutes against an upstream failing 5% of calls; exits 1 when a check fails (bench/soak.py).
soak: $(RUNTIME_STAMP)
	$(PY) -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
