# syntax=docker/dockerfile:1
# The adrank server image: `adrank serve` as a non-root user, with only the runtime libraries.
#
#   docker build -t REGISTRY/adrank:0.1.0 .                                   # CPU, bundled models in /models
#   docker build --target runtime -t REGISTRY/adrank:0.1.0 .                  # CPU, models from a volume
#   docker build --build-arg ADRANK_VARIANT=gpu -t REGISTRY/adrank:0.1.0-gpu .  # NVIDIA GPUs (README: GPU serving)
#
# Contract: stage `build` compiles the wheel with Debian's toolchain (the packages of
# scripts/system_packages.sh's `serve` group: the one list `make install` uses too) and installs it with
# its pinned dependencies into the virtual environment /opt/adrank; stage `runtime` is the same Debian
# release with Python and the shared libraries the core links (grpc++, protobuf) and nothing to build
# with, runs as uid 10001 and starts `adrank serve`; stage `bundled` (the default) adds the repository's
# models at /models, read-only to that user. deploy/k8s/ runs this image; tests/python/test_deploy_manifests.py
# lints this file (hadolint) and checks its structure, since no container engine runs in CI.
#
# Why these values:
# - debian:12.11-slim in both stages: the build and the runtime must be the same release, so that the
#   core's shared libraries (libgrpc++1.51, libprotobuf32) are the ones it was compiled against, and the
#   venv's interpreter (/usr/bin/python3, 3.11) is where the venv expects it. 12.11 is the release CI
#   builds and tests on; a point release, not `bookworm`, so that a rebuild gets the same base.
# - ADRANK_GRPC_FRONTEND=ON: the image must have the C++ gRPC front end (README: Tuning, ~5x the Python
#   one's calls per core); ON makes a build without grpc++ fail instead of quietly leaving it out.
# - uid/gid 10001: above any distribution's system range, matching runAsUser in deploy/k8s.

ARG DEBIAN_IMAGE=debian:12.11-slim

FROM ${DEBIAN_IMAGE} AS build
# cpu: ONNX Runtime's CPU build (the base dependencies); gpu: the `gpu` extra, then ONNX Runtime's CPU
# build swapped for its CUDA build as `make install-gpu` does (both install into one Python package).
ARG ADRANK_VARIANT=cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY scripts/system_packages.sh scripts/system_packages.sh
# python3-dev: the headers the extension compiles against (a pyenv Python brings its own; Debian's does not).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev python3-venv \
 && PYTHON=python3 scripts/system_packages.sh serve \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml CMakeLists.txt README.md ./
COPY cpp cpp
COPY proto proto
COPY python python
# The build requirements are pinned in pyproject.toml's [build-system], as `make venv` installs them.
RUN python3 -m venv /opt/adrank \
 && /opt/adrank/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/adrank/bin/python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
      | xargs /opt/adrank/bin/pip install --no-cache-dir \
 && /opt/adrank/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels \
      -C cmake.define.ADRANK_GRPC_FRONTEND=ON . \
 && wheel=$(ls /wheels/adrank-*.whl) \
 && if [ "$ADRANK_VARIANT" = gpu ]; then \
      /opt/adrank/bin/pip install --no-cache-dir "${wheel}[gpu]" \
      && /opt/adrank/bin/pip uninstall --yes onnxruntime onnxruntime-gpu \
      && /opt/adrank/bin/pip install --no-cache-dir --no-deps "$(/opt/adrank/bin/python -c "import tomllib; print(next(r for r in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu'] if r.startswith('onnxruntime-gpu')).replace('[cuda,cudnn]', ''))")"; \
    else \
      /opt/adrank/bin/pip install --no-cache-dir "${wheel}"; \
    fi \
 && /opt/adrank/bin/pip uninstall --yes scikit-build-core pybind11 grpcio-tools \
 && /opt/adrank/bin/adrank serve --help > /dev/null

FROM ${DEBIAN_IMAGE} AS runtime
# The core's shared libraries (their own dependencies, abseil, re2, c-ares, OpenSSL, come along) and the
# interpreter; no compiler, no headers, no CMake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgrpc++1.51 libprotobuf32 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 adrank \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin adrank
COPY --from=build /opt/adrank /opt/adrank
# Nothing is written at run time but the audit log (--audit-log; deploy/k8s gives it an emptyDir) and TLS
# material the server checked (a private folder under TMPDIR): no bytecode, unbuffered logs.
ENV PATH=/opt/adrank/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# gRPC (Rank, KServe v2, health, reflection), HTTP (/healthz, /readyz, /metrics, /v2), admin gRPC.
EXPOSE 8500 8000 8501
ENTRYPOINT ["adrank", "serve"]
CMD ["--repository", "/models", "--host", "0.0.0.0", "--http-host", "0.0.0.0", "--audit-log", "/tmp/adrank-audit"]

FROM runtime AS bundled
# The bundled models (ctr, relevance), owned by root: the server user reads them and never writes.
COPY --chown=0:0 models /models
