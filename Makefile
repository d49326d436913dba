# The two commands of the README: `make demo` and `make test`. Each installs what it needs
# (a virtual environment in .venv with the package and its dependencies) the first time.
# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (these machines), nothing else writes the
# .pyc files, and every `mambo` process compiled ccxt again: 14.5 s to import it, 3.1 s compiled.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv

.PHONY: demo test lint typecheck unit install clean bench browser kafka-jars deploy-tools deploy-render prometheus

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/mambo demo

lint: install
	$(VENV)/bin/ruff check mambo tests benchmarks tools
	$(VENV)/bin/ruff format --check mambo tests benchmarks tools

typecheck: install
	$(VENV)/bin/mypy

# The Kafka broker's jars for the integration tests (Maven, cached in ~/.cache/mambo and ~/.m2).
kafka-jars: install
	$(VENV)/bin/mambo kafka fetch

unit: install kafka-jars deploy-tools prometheus
	$(PY) -m pytest

test: lint typecheck browser unit

bench: install
	$(PY) benchmarks/embedded_pipeline.py

# Debian's chromium for the dashboard test: Playwright (from PyPI) drives it; `playwright install` does
# not work on these machines. Skipped when already installed.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

# Debian's prometheus (prometheus and promtool) and prometheus-alertmanager (and amtool) for tests/ops:
# promtool checks the metrics expositions and the alert rules, a real Prometheus scrapes a demo run,
# and a real Alertmanager routes an alert to a webhook. Skipped when already installed.
prometheus:
	@test -x /usr/bin/promtool || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq prometheus)
	@test -x /usr/bin/prometheus-alertmanager || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq prometheus-alertmanager)

# The deployment files' validators for tests/deploy (no container engine or cluster needed): Debian's
# docker-compose (`docker-compose config`) and helm built from the Go module proxy, cached in
# ~/.cache/mambo/bin (a few minutes, once). kubernetes-validate comes with the test extra.
HELM_VERSION ?= v3.21.4
HELM_BIN := $(HOME)/.cache/mambo/bin
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
deploy-tools: $(HELM_BIN)/.helm-$(HELM_VERSION)
	@test -x /usr/bin/docker-compose || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq docker-compose)

# A go-installed helm reports no patch version, so a stamp file records which one was built.
$(HELM_BIN)/.helm-$(HELM_VERSION):
	GOBIN=$(HELM_BIN) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	touch $@

# Regenerate the Strimzi topics and the plain manifests (deploy/k8s) from the registry and the chart.
deploy-render: install deploy-tools
	HELM=$(HELM_BIN)/helm $(PY) tools/render_deploy.py

clean:
	rm -rf $(VENV) .mambo .pytest_cache .mypy_cache .ruff_cache
