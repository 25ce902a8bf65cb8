# The index of dev tasks. `make help` lists them.
# Everything runs from the project's virtual environment (.venv), made by `make install`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SRC := operator/src worker-image/src
PYTEST_ARGS ?=

.PHONY: help
help: ## list the tasks
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

INSTALLED := $(VENV)/.installed
$(INSTALLED): pyproject.toml tools/devcluster/pyproject.toml | $(PY)
	$(BIN)/pip install --quiet -e ".[operator,worker]" -e tools/devcluster --group dev
	touch $@

.PHONY: install
install: $(INSTALLED) ## create .venv and install the project and the dev cluster (editable) with every extra and the dev tools

.PHONY: system-packages
system-packages: ## install what the tests need and the machine lacks: redis-server, make, containerd, runc, CNI plugins, buildah, debootstrap, lua5.4, jq, promtool
	@tools/system-packages.sh

.PHONY: demo-packages
demo-packages:
	@tools/system-packages.sh demo

.PHONY: demo
demo: demo-packages install ## the stock-research example on a fresh dev cluster with a real node, from apply to results (needs root)
	@[ -x .devcluster/bin/kube-apiserver ] || echo "==> building the control plane tools from the Kubernetes Go modules; the first time this takes several minutes"
	@tools/controlplane/build.sh
	@tools/coredns/build.sh
	@tools/helm/build.sh
	@echo "==> the images: a Debian base, then operator, worker and redis with buildah (minutes the first time)"
	@$(PY) -m analysis_devcluster.images --node
	$(PY) -m analysis_devcluster.demo

.PHONY: controlplane
controlplane: ## build the control plane, the node's kubelet, kube-proxy, kube-scheduler and CoreDNS, kubectl and helm into .devcluster/bin (cached)
	tools/controlplane/build.sh
	tools/coredns/build.sh
	tools/helm/build.sh

.PHONY: seaweedfs
seaweedfs: ## build SeaweedFS (weed: the S3-compatible store the results tests write to) into .devcluster/bin (cached)
	tools/seaweedfs/build.sh

.PHONY: kstatus
kstatus: ## build kstatus (status.Compute of sigs.k8s.io/cli-utils: how Flux and kpt judge a resource) into .devcluster/bin (cached)
	tools/kstatus/build.sh

# checkov, the chart scan of tests/integration/test_chart_scan.py, in a venv of its own (its many dependencies
# stay out of the project's); pinned, so a new release's checks do not change the test's verdict.
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/bin/checkov:
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==3.3.30

.PHONY: checkov
checkov: $(CHECKOV_VENV)/bin/checkov ## install checkov (the chart scan's tool) into .venv-checkov

.PHONY: node-images
node-images: install ## build what the dev cluster's node runs (Debian base, pause, operator, worker, redis; cached by digest)
	$(PY) -m analysis_devcluster.images --node

.PHONY: images
images: install ## build the operator, worker and redis images (buildah or docker) and save them as archives in dist/images; BASE_IMAGE=debian builds on a local Debian base
	$(PY) -m analysis_devcluster.images --out dist/images $(if $(BASE_IMAGE),--base=$(BASE_IMAGE))

.PHONY: lint
lint: install ## ruff: lint and format check
	$(BIN)/ruff check $(SRC) tests bench hatch_build.py tools/devcluster
	$(BIN)/ruff format --check $(SRC) tests bench hatch_build.py tools/devcluster

.PHONY: format
format: install ## ruff: fix what can be fixed and format
	$(BIN)/ruff check --fix $(SRC) tests bench hatch_build.py tools/devcluster
	$(BIN)/ruff format $(SRC) tests bench hatch_build.py tools/devcluster

.PHONY: typecheck
typecheck: install ## mypy --strict over the four packages
	$(BIN)/mypy

.PHONY: imports
imports: install ## import-linter: the import rules of docs/design.md#import-rules
	$(BIN)/lint-imports

.PHONY: crds
crds: install ## generate crds/ from the API models
	$(PY) -m analysis_core.api.crd --write --dir crds

.PHONY: chart-crds
chart-crds: ## copy crds/ into the Helm chart (charts/analysis-operator/files/crds/), which templates it
	rm -f charts/analysis-operator/files/crds/*.yaml
	cp crds/*.yaml charts/analysis-operator/files/crds/

.PHONY: check-crds
check-crds: install ## fail if crds/ differs from what the API models generate
	$(PY) -m analysis_core.api.crd --check --dir crds

.PHONY: test
test: system-packages install controlplane kstatus seaweedfs checkov node-images ## the default test run: every tier (unit, integration, e2e) against the real control plane, node and Redis (needs root)
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install ## unit tests only (no control plane, no Redis)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

.PHONY: dev-cluster
dev-cluster: system-packages install controlplane node-images ## start the control plane, redis and the node (kubelet, containerd) in the background; needs root
	$(BIN)/analysis-devcluster up

.PHONY: dev-cluster-down
dev-cluster-down: install ## stop the dev cluster
	$(BIN)/analysis-devcluster down

# arq, the baseline of bench/queue_bench.py, in a venv of its own: arq 0.28 needs redis-py < 6, the project 8.
ARQ_VENV := .venv-arq
$(ARQ_VENV)/bin/arq:
	python3 -m venv $(ARQ_VENV)
	$(ARQ_VENV)/bin/pip install --quiet arq==0.28.0

.PHONY: .venv-arq
.venv-arq: $(ARQ_VENV)/bin/arq

# BullMQ, the other baseline of bench/queue_bench.py (Node 20): the versions bench/bullmq/package-lock.json pins.
# npm ci reinstalls only when the lockfile changes; the cache in $HOME makes that offline after the first time.
BULLMQ_DIR := bench/bullmq
$(BULLMQ_DIR)/node_modules/.package-lock.json: $(BULLMQ_DIR)/package-lock.json $(BULLMQ_DIR)/package.json
	cd $(BULLMQ_DIR) && npm ci --cache "$(HOME)/.npm" --prefer-offline --ignore-scripts --no-audit --no-fund

.PHONY: bench-bullmq
bench-bullmq: $(BULLMQ_DIR)/node_modules/.package-lock.json ## install BullMQ for bench/queue_bench.py (npm ci in bench/bullmq)

.PHONY: bench
bench: install controlplane .venv-arq bench-bullmq ## benchmarks: dev cluster warm start; stage queue vs arq and BullMQ, pickup, limiter (~6 min); writes bench/results/
	$(PY) bench/devcluster_start.py
	$(PY) bench/queue_bench.py

.PHONY: bench-node
bench-node: install controlplane ## benchmark the real node: cold, warm and cached image builds, node start, pod start (~10 min); writes bench/results/node.json
	$(PY) bench/node_bench.py

.PHONY: bench-accounts
bench-accounts: install ## benchmark a shared provider account: fair shares over time, utilization of its limit, a small batch behind a big one (~4 min); writes bench/results/accounts.json
	$(PY) bench/accounts_bench.py

.PHONY: bench-pods
bench-pods: install controlplane ## benchmark pods that carry many calls on the real node: makespan against the ideal, memory and CPU per call (~5 min); writes bench/results/pods.json
	$(PY) bench/pods_bench.py

.PHONY: bench-failover
bench-failover: install controlplane ## benchmark operator failover: two replicas and a leader Lease, the leader killed or stopped, until the standby's first reconcile (~3 min); writes bench/results/failover.json
	$(PY) bench/scale_failover.py

.PHONY: bench-scale
bench-scale: install controlplane seaweedfs node-images ## benchmark batches at scale on the real node: 10,000 items, 100 batches at once, a 5-stage batch's Redis memory, batch mode (needs root); writes bench/results/scale.json
	$(PY) bench/scale_batches.py $(BENCH_ARGS)

.PHONY: bench-build
bench-build: ## benchmark a cold control-plane build (empty Go build cache, ~7 min); writes bench/results/
	bench/controlplane_build.sh

.PHONY: all
all: lint typecheck imports check-crds test ## everything CI checks

.PHONY: clean
clean: ## remove caches (keeps .venv and the built control plane)
	rm -rf .mypy_cache .ruff_cache .pytest_cache .import_linter_cache dist build
