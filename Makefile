# tess-ffi: two commands on a fresh machine -> `make demo`, `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/tess-ffi demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.science

clean:
	rm -rf $(VENV) demo-lake demo-ffi .pytest_cache

# Debian's chromium for the report's browser test (tests/test_user.py); idempotent
CHROMIUM_STAMP := $(VENV)/.chromium
$(CHROMIUM_STAMP):
	command -v chromium >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	mkdir -p $(VENV) && touch $@

test: $(CHROMIUM_STAMP)

# ---- platform: Prefect server + UI (http://127.0.0.1:4200) and SeaweedFS S3 (127.0.0.1:8333)
# state (data, logs, pids, generated S3 keys) in .platform/; `source .tess-ffi.env` afterwards
.PHONY: up down serve

up: install
	$(BIN)/tess-ffi up

down:
	@if [ -x $(BIN)/tess-ffi ]; then $(BIN)/tess-ffi down; else echo "not installed"; fi

# serve the deployments (ingest-ccd, find-variables, ingest-new-sectors) until Ctrl-C
serve: install
	@test -f .tess-ffi.env || { echo "run make up first"; exit 1; }
	. ./.tess-ffi.env && $(BIN)/tess-ffi serve $(SERVE_ARGS)

# fault injection: the faults of tests/test_faults.py and their table (also part of `make test`)
.PHONY: faults
faults: install
	$(BIN)/pytest -q tests/test_faults.py
