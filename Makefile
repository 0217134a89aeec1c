# Entry points of mqtt-operator. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TESTENV_DIR ?= $(CURDIR)/.testenv
PYTEST_ARGS ?=

.PHONY: help venv testenv test test-unit lint dev crds chart bench soak e2e image images clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# setup.py builds the C PUBLISH reader in place (an editable install): a change to it rebuilds.
$(VENV)/.installed: pyproject.toml setup.py operator/mqtt_operator/bridge/_publish.c operator/mqtt_operator/bridge/_kafka_batch.c
	bash hack/testenv/install-build-tools.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c 'import mqtt_operator.bridge._publish, mqtt_operator.bridge._kafka_batch'  # built (setup.py makes it optional for other installs)
	touch $@

venv: $(VENV)/.installed ## Create .venv with the operator and its dev tools

testenv: ## Install the real test environment (kube-apiserver, etcd, kubectl, helm, kubeconform, Kafka, Mosquitto and our broker plugin, kcat)
	bash hack/testenv/install-debian.sh
	bash hack/testenv/build-broker-plugin.sh >/dev/null
	bash hack/testenv/install-kafka.sh
	bash hack/testenv/install-rocketmq.sh
	bash hack/testenv/build-go-tools.sh all

test: venv testenv chart-check images ## Install what is missing, then run every test (unit, integration, e2e)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv ## Only the pure unit tests (no components)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv ## ruff and mypy (strict on the package)
	$(VENV)/bin/ruff check operator tests testenv hack bench localnode e2e images
	$(VENV)/bin/ruff format --check operator tests testenv hack bench localnode e2e images
	$(VENV)/bin/mypy

dev: venv testenv images ## A real one-node Kubernetes here: the operator by its chart, Kafka, RocketMQ; Ctrl-C stops all
	$(PY) -m localnode dev

e2e: venv testenv images ## Only the whole-system tests (e2e/) on the real node; needs root
	$(PY) -m pytest e2e $(PYTEST_ARGS)

# kind and its node image are pinned in e2e/kind/versions.env; run.sh says plainly when Docker is missing.
.PHONY: e2e-kind
e2e-kind: venv ## The same e2e tests on a kind cluster: image, chart, Kafka (needs Docker)
	PYTEST_ARGS='$(PYTEST_ARGS)' bash e2e/kind/run.sh

crds: venv ## Check the CRDs in crds/ against the API server's rules (they are the source of truth)
	$(PY) -m pytest tests/integration/test_crds.py -q

chart: venv ## Regenerate the chart's CRD templates from crds/
	$(PY) hack/sync_chart_crds.py

chart-check: venv
	$(PY) hack/sync_chart_crds.py --check

image: ## Build the one image (operator and bridge workers)
	docker build -t mqtt-operator:dev .

images: ## Build the cluster's images without Docker (buildah) into $(TESTENV_DIR)/images; only what changed
	bash hack/images/build.sh

clean: ## Remove the venv and the test environment cache
	rm -rf $(VENV) $(TESTENV_DIR)

soak: venv testenv images ## 30 min at 2,000 msg/s through one KafkaConnector on the real node; RSS flat, nothing lost (not in make test)
	$(PY) bench/soak.py $(SOAK_ARGS)

bench: venv testenv ## Run the benchmarks; figures go to bench/results.json
	$(PY) bench/bench_access.py
	$(PY) bench/bench_access.py --count 5000
	$(PY) bench/bench_bridge.py
	$(PY) bench/bench_function.py
	$(PY) bench/bench_rocketmq.py
	$(PY) bench/bench_broker.py
