# The two commands: `make test` and `make demo`. Each sets up what it needs on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY      := .venv/bin/python
UV      := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
# Debian packages the tests run against. Installed only when missing.
DEBS    := etcd-server mosquitto containerd runc containernetworking-plugins busybox-static iproute2
export UV_PYTHON_DOWNLOADS := never

.PHONY: help test demo demo-down conformance venv proto deps kube lint typecheck imports pytest clean

help:
	@echo "make test   set up (venv, Debian packages, Kubernetes binaries) and run lint, types, import rules, tests"
	@echo "make demo   the end-to-end demo"
	@echo "make conformance   Kubernetes' node conformance specs against a kubage edge node (not in make test)"

test: venv proto deps kube lint typecheck imports pytest

# Brings up the control plane, mosquitto, containerd, CloudCore (keadm init), EdgeCore (keadm join), a pod and a
# device, then waits for Ctrl-C. Everything lives in /tmp/kubage-demo (KUBAGE_DEMO_DIR); DEMO_ONCE=1 tears down
# after the last check instead (exit 0 only if every step succeeded).
demo: venv proto deps kube
	@$(PY) -m scripts.demo

# Kubernetes' own node conformance selection (e2e.test, built and cached by scripts/build-kube) against a kubage
# edge node; prints a table per group, each failing spec with its reason, and a final JSON line. A smoke subset
# of it runs inside make test (tests/integration/test_conformance.py).
conformance: venv proto deps kube
	@scripts/conformance

# Stops a demo left running (e.g. in another terminal), or what a killed one left behind.
demo-down:
	@$(PY) -m scripts.demo down

# uv installs exactly what uv.lock pins; --frozen refuses to touch a lock that disagrees with pyproject.toml.
venv: $(UV)
	@$(UV) sync --frozen --quiet
	@$(MAKE) --no-print-directory proto

# The CRI messages (api_pb2, which the CRI client sends over its own HTTP/2) and grpcio stubs (api_pb2_grpc, which
# only the test harness uses, to call containerd directly), generated from edgecore/edged/cri/api.proto (not
# checked in). protoc writes `import api_pb2` into the grpc module; inside the package that must be a relative import.
CRI := edgecore/edged/cri
proto:
	@$(PY) -m grpc_tools.protoc -I $(CRI) --python_out=$(CRI) --grpc_python_out=$(CRI) --pyi_out=$(CRI) $(CRI)/api.proto
	@sed -i 's/^import api_pb2 as api__pb2$$/from . import api_pb2 as api__pb2/' $(CRI)/api_pb2_grpc.py

$(UV):
	python3 -m pip install --quiet --user uv

deps:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

kube:
	@scripts/build-kube kube-apiserver kube-scheduler kube-controller-manager e2e.test agnhost ginkgo nonewprivs >/dev/null
	@scripts/build-training-operator >/dev/null

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy

imports:
	.venv/bin/lint-imports

pytest:
	PYTHONASYNCIODEBUG=1 $(PY) -m pytest -q

clean:
	rm -rf .venv .mypy_cache .pytest_cache .ruff_cache
