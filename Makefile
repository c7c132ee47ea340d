# The two commands: `make run` starts everything, `make test` passes the suite.
# Both create the virtualenv and install what they need on first use.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test faults bench lint install clean browser contracts manifests

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP)

## Start the embedded broker and database, apply migrations, start every service. Ctrl-C stops all.
run: $(STAMP)
	$(BIN)/python -m shared.devstack run

## Debian's Chromium for the dashboard's browser test (no browser can be downloaded here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

## The whole suite against a real broker and a real PostgreSQL (embedded unless
## KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL point elsewhere).
test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The whole system under faults: every service SIGKILLed twice, PostgreSQL restarted, every
## event delivered twice; then every balance, subscription and seat count must converge.
## CI runs it after `make test` (about two minutes).
faults: $(STAMP)
	$(BIN)/python -m pytest tests/faults -m faults $(PYTEST_ARGS)

## Throughput and latency against this machine's ceilings; writes bench/results/*.json.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

## The AsyncAPI document of the topics and the OpenAPI document of each service, under docs/.
contracts: $(STAMP)
	$(BIN)/python -m shared.contracts write

## The Kubernetes manifests of the whole system: deploy/kubernetes/billing.yaml.
manifests: $(STAMP)
	$(BIN)/python deploy/kubernetes/render.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .data
