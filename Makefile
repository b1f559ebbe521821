# tmc-relay: run it locally, test it, build it, deploy and operate it. `make help` lists targets.
#
# Python tools live in a project-local virtualenv (.venv, git-ignored), installed on first use
# from the pinned infra/requirements*.txt. Services started locally bind 127.0.0.1 only and are
# always stopped again; their ports, pids and logs go to .run/.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
VENV_BIN := $(abspath $(VENV))/bin
TOOLS := $(VENV)/.tools-installed
DEPLOY_TOOLS := $(VENV)/.deploy-tools-installed
# ministack (the local AWS that template.yaml is deployed into) lives in its own virtualenv:
# it pins botocore differently from moto and boto3 in .venv.
MINISTACK_VENV := .venv-ministack
MINISTACK_TOOLS := $(MINISTACK_VENV)/.tools-installed
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
PIP := $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check

# cargo-lambda, zig (python -m ziglang) and sam come from the virtualenv. The jitter-entropy
# source of aws-lc-sys costs ~50 ms of cold start and is not needed on Lambda.
TOOLS_ENV := PATH="$(VENV_BIN):$$PATH" AWS_LC_SYS_NO_JITTER_ENTROPY=1 SAM_CLI_TELEMETRY=0

# The deployed stack: from samconfig.toml once `make deploy` has run, or STACK=... on the line.
STACK ?= $(shell sed -n 's/^stack_name *= *"\(.*\)"/\1/p' samconfig.toml 2>/dev/null | head -n1)

# make backfill variables (empty: the deployed default).
GROUP ?=
QUANTITY ?=
MODE ?=
MAX_BATCHES ?=
MAX_MESSAGES ?=
MAX_SECONDS ?=
CONCURRENCY ?=

.PHONY: help tools demo test lint build sam-build deploy backfill logs local-up local-down

help: ## List the targets
	@echo "tmc-relay targets:"
	@sed -n 's/^\([a-z-]*\):.*## \(.*\)/  make \1\t\2/p' $(MAKEFILE_LIST) | expand -t 22

tools: $(TOOLS) $(MINISTACK_TOOLS) ## Install the pinned Python tools into .venv and .venv-ministack (the other targets do this when needed)

demo: $(TOOLS) $(MINISTACK_TOOLS) ## Deploy template.yaml into a local AWS (ministack) and let it drain the TMC simulator (3,000 messages)
	infra/demo.sh

test: $(TOOLS) $(MINISTACK_TOOLS) ## All tests: cfn-lint, template tests, the stack deployed into ministack, cargo nextest (moto + ministack)
	infra/test.sh

local-up: $(TOOLS) $(MINISTACK_TOOLS) ## Deploy the stack into ministack beside the TMC simulator and keep them running; prints the env vars to use
	infra/local-stack.sh up

local-down: ## Stop what make local-up started
	infra/local-stack.sh down

# make chaos: the size of the run and its seed (a seed fixes the messages, fault draws and crash points).
SEED ?= 1
MESSAGES ?= 100000
CRASHES ?= 20
FAULT_RATE ?= 0.05
# The storm phase: as many messages, through storms and stalls, with STORM_CRASHES SIGKILLs.
STORM_MESSAGES ?= $(MESSAGES)
STORM_CRASHES ?= 10

.PHONY: chaos
chaos: ## Chaos harness (in-memory AWS): MESSAGES= through FAULT_RATE= faults and CRASHES= SIGKILLs, then STORM_MESSAGES= through storms and stalls, SEED=; prints the figures
	cargo build --bin tmc-chaos --bin tmc-relay
	$(TARGET_DIR)/debug/tmc-chaos --messages $(MESSAGES) --crashes $(CRASHES) \
		--fault-rate $(FAULT_RATE) --seed $(SEED) --processes 4 \
		--storm-messages $(STORM_MESSAGES) --storm-crashes $(STORM_CRASHES)

lint: $(TOOLS) ## cargo fmt --check, cargo clippy -D warnings, cfn-lint
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	$(VENV)/bin/cfn-lint template.yaml

build: $(TOOLS) ## Release Lambda artifact for arm64: target/lambda/bootstrap/bootstrap.zip (prints its size)
	@rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu \
		|| rustup target add aarch64-unknown-linux-gnu
	$(TOOLS_ENV) cargo lambda build --release --arm64 --package tmc-relay --bin bootstrap --output-format zip \
		--lambda-dir $(TARGET_DIR)/lambda
	@$(VENV)/bin/python infra/local.py artifact $(TARGET_DIR)/lambda/bootstrap/bootstrap.zip

.PHONY: throttle-table
throttle-table: $(TOOLS) $(MINISTACK_TOOLS) ## Issue 19's table: DynamoDB writes throttled at p = 0.5, 0.7, 0.9 for a pass, and an outage (ministack)
	infra/throttle-table.sh

.PHONY: bench
bench: ## Throughput vs the TMC limit, cold start, sizes, memory, CPU/msg, AWS usage, cost (QUICK=1: <1 min)
	cargo build --release --bins
	$(TARGET_DIR)/release/tmc-bench $(if $(QUICK),--quick) --bin-dir $(TARGET_DIR)/release \
		--arm64-bin $(TARGET_DIR)/aarch64-unknown-linux-gnu/release/bootstrap \
		--lambda-zip $(TARGET_DIR)/lambda/bootstrap/bootstrap.zip

sam-build: $(DEPLOY_TOOLS) ## sam build --beta-features (offline; output in .aws-sam/)
	$(TOOLS_ENV) $(VENV)/bin/sam build --beta-features

deploy: sam-build ## sam deploy (--guided the first time, which saves your answers in samconfig.toml)
	@if grep -q '^stack_name' samconfig.toml; then \
		$(TOOLS_ENV) $(VENV)/bin/sam deploy; \
	else \
		$(TOOLS_ENV) $(VENV)/bin/sam deploy --guided; \
	fi

backfill: $(TOOLS) ## Invoke the deployed function once: GROUP= QUANTITY= MODE= MAX_BATCHES= MAX_MESSAGES= MAX_SECONDS= CONCURRENCY=
	@test -n "$(STACK)" || { echo "no stack: run make deploy first, or pass STACK=<name>" >&2; exit 2; }
	$(VENV)/bin/python infra/local.py backfill --stack "$(STACK)" \
		--group "$(GROUP)" --quantity "$(QUANTITY)" --mode "$(MODE)" \
		--max-batches "$(MAX_BATCHES)" --max-messages "$(MAX_MESSAGES)" \
		--max-seconds "$(MAX_SECONDS)" --concurrency "$(CONCURRENCY)"

logs: $(DEPLOY_TOOLS) ## Tail the deployed function's logs
	@test -n "$(STACK)" || { echo "no stack: run make deploy first, or pass STACK=<name>" >&2; exit 2; }
	$(TOOLS_ENV) $(VENV)/bin/sam logs --stack-name "$(STACK)" --name RelayFunction --tail

# --- the virtualenv (stamp files: reinstalled when a requirements file changes) ----------------

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "$(PYTHON) is older than 3.10; set PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) \
		|| { echo "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }

$(TOOLS): infra/requirements.txt | $(VENV)/bin/python
	$(PIP) -r infra/requirements.txt
	@touch $@

$(MINISTACK_VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "$(PYTHON) is older than 3.10; set PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(MINISTACK_VENV)

$(MINISTACK_TOOLS): infra/requirements-ministack.txt | $(MINISTACK_VENV)/bin/python
	$(MINISTACK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r infra/requirements-ministack.txt
	@touch $@

$(DEPLOY_TOOLS): infra/requirements-deploy.txt infra/requirements.txt | $(VENV)/bin/python
	$(PIP) -r infra/requirements-deploy.txt
	@touch $(TOOLS) $@
