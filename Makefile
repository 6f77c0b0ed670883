# cniwarden developer entry points. `make test` and `make demo` set up
# everything they need first (Debian packages, the venv, pinned tools).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/.tools/bin:$(PATH)

.PHONY: setup debs venv tools images test lint typecheck unit integration e2e bench plugins bench-fastpath bench-plugin fuzz \
        cluster-up cluster-down demo demo-down bench-rtt bench-churn conformance clean

setup: debs venv tools

debs:
	./scripts/install-debian-packages.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

# Pinned Go-built tools (kube-* v1.33, etcd, helm, kwok, cnitool) into .tools/bin.
tools: debs
	./tools/build-tools.sh

# Both images from images/Dockerfile with buildah (devtools/ship/images.py); unchanged
# inputs hit the layer cache. Archives in build/images/ for the local cluster's nodes.
images: debs venv
	$(BIN)/python -m devtools.ship.images

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=operator:. $(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit

# The fast-path shim (shim/, C, static): one binary installed under both plugin names.
CNI_BIN := build/cni-bin
SHIM_CFLAGS := -std=gnu11 -Os -Wall -Wextra -Werror -Wformat=2 -Wno-format-nonliteral \
               -D_FORTIFY_SOURCE=2 -fstack-protector-strong
plugins: $(CNI_BIN)/cniwarden-bridge $(CNI_BIN)/cniwarden-host-local

build/shim/cniwarden-shim: shim/cniwarden-shim.c shim/versions.h
	@mkdir -p $(@D)
	$(CC) $(SHIM_CFLAGS) -static -s -o $@.tmp $< && mv $@.tmp $@

$(CNI_BIN)/cniwarden-%: build/shim/cniwarden-shim
	@mkdir -p $(@D)
	cp $< $@.tmp && mv $@.tmp $@

# Reference vs standalone vs shim+server, side by side (root; see bench/fastpath.py).
bench-fastpath: setup plugins
	$(BIN)/python -m bench.fastpath $(BENCH_ARGS)

# Reference vs the standalone Python plugins, exec to exit (root; see bench/plugin.py).
bench-plugin: setup
	$(BIN)/python -m bench.plugin $(BENCH_ARGS)

# Pod-to-pod RTT, cniwarden vs the reference bridge, on a 4-node local cluster (root).
bench-rtt: setup plugins
	$(BIN)/python -m bench.pod_rtt $(BENCH_ARGS)

# Pod churn (100 pods at once, Running, deleted; 3 rounds), cniwarden vs the reference,
# on the same 4-node local cluster (root; see bench/pod_churn.py).
bench-churn: setup plugins
	$(BIN)/python -m bench.pod_churn $(BENCH_ARGS)

bench: bench-plugin bench-fastpath bench-rtt

# The whole suite, as CI runs it (the e2e tests run the chart from the images).
# The conformance kit (TOOLS=conformance) is built by the suite itself, while the
# rest of it runs (tests/conftest.py).
test: setup lint typecheck plugins images
	CNIWARDEN_REQUIRE_ALL=1 $(BIN)/pytest tests

# A local Kubernetes (see README "Local cluster"). Variables: CLUSTER (name),
# TIER (control-plane | fake-nodes | real-node), FAKE_NODES, REAL_NODES,
# CNI (none | bridge), RUNTIME (each real node's runtime, comma-separated:
# containerd-1.6 | containerd-1.7 | containerd-2 | crio; the last repeats).
# The last line printed is KUBECONFIG=<path>.
CLUSTER ?= dev
TIER ?= real-node
FAKE_NODES ?= 3
REAL_NODES ?=
CNI ?= none
RUNTIME ?= containerd-1.6
PROXY_MODE ?= iptables

cluster-up: setup
	@$(BIN)/python -m devtools.localcluster up --name $(CLUSTER) --tier $(TIER) \
	  --fake-nodes $(FAKE_NODES) $(if $(REAL_NODES),--real-nodes $(REAL_NODES)) --cni $(CNI) --runtime $(RUNTIME) \
	  --proxy-mode $(PROXY_MODE)

cluster-down: venv
	@$(BIN)/python -m devtools.localcluster down --name $(CLUSTER)

# One command from a fresh machine: a two-node local cluster, the chart installed,
# the example network, two pods talking across nodes, the status (README "Demo").
demo: setup plugins images
	@$(BIN)/python -m devtools.ship.demo

# Kubernetes' own sig-network e2e (e2e.test v1.33, ginkgo, agnhost built here) against
# cniwarden on a fresh 2-real-node cluster; JUnit in build/conformance/ (README "Conformance").
# CONFORMANCE=full (default) | ci (the subset CI runs); CONFORMANCE_PROCS (ginkgo -p);
# PROXY_MODE=iptables (default) | nftables (kube-proxy's mode on both nodes).
CONFORMANCE ?= full
CONFORMANCE_PROCS ?= 4
conformance: setup plugins images
	TOOLS="default conformance" ./tools/build-tools.sh
	$(BIN)/python -m devtools.conformance --selection $(CONFORMANCE) --procs $(CONFORMANCE_PROCS) \
	  --proxy-mode $(PROXY_MODE)

demo-down: venv
	@$(BIN)/python -m devtools.ship.demo --down

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache

# Long fuzzing runs: every hypothesis target (tests marked fuzz) with FUZZ_EXAMPLES
# random examples each, failures remembered in .hypothesis/ (CI runs a fixed, small,
# derandomized budget as part of `make test`).
FUZZ_EXAMPLES ?= 20000
.PHONY: fuzz
fuzz: venv plugins
	CNIWARDEN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -m fuzz --timeout=0 \
	  --hypothesis-show-statistics tests/unit tests/integration/fastpath/test_fuzz_wire.py
