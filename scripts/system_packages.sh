#!/usr/bin/env bash
# The Debian/Ubuntu packages adrank needs, installed when missing: the one list, used by `make serve`,
# `make test` and `.ci/run`.
#
#   scripts/system_packages.sh serve   # build and serve: toolchain, protobuf (required by the core), grpc++
#   scripts/system_packages.sh test    # the above, plus GoogleTest, Chromium and Prometheus for the tests, clang
#                                      # for the fuzz targets
#
# Contract: exits 0 at once (a dpkg query, no network) when every package of the group is installed.
# Otherwise, as root it runs apt-get update and apt-get install for the missing ones; as anyone else it
# prints one line naming the command to run and exits 1, changing nothing. On a system without dpkg
# (not Debian or Ubuntu) it prints one line saying what the build expects and exits 0: the build then
# says precisely what it could not find.
set -euo pipefail

group="${1:-serve}"
python="${PYTHON:-python3}"

# protobuf is required by the core's Rank contract (cpp/rank_call.h); grpc++ builds the C++ gRPC front end
# (cpp/frontend/rank_server.h). pkg-config lets CMake find grpc++.
serve_packages=(cmake g++ make ninja-build pkg-config libprotobuf-dev protobuf-compiler libgrpc++-dev
  protobuf-compiler-grpc)
# GoogleTest for ctest; a real Prometheus scrapes a running server (tests/python/test_prometheus.py) and
# headless Chromium loads the dashboard (tests/python/test_dashboard_browser.py, through Playwright); clang and
# its compiler-rt (libclang-rt-dev: libFuzzer, ASan and UBSan's runtimes for the default clang) build the fuzz
# targets (tests/fuzz/, `make fuzz`).
test_packages=(libgtest-dev prometheus chromium fonts-dejavu-core clang libclang-rt-dev)

case "$group" in
  serve) wanted=("${serve_packages[@]}") ;;
  test) wanted=("${serve_packages[@]}" "${test_packages[@]}") ;;
  *) echo "usage: $0 serve|test" >&2; exit 2 ;;
esac

# Debian's own python3 makes virtual environments only with python3-venv (ensurepip is split out).
if ! "$python" -c "import ensurepip" > /dev/null 2>&1; then
  wanted+=(python3-venv)
fi

if ! command -v dpkg-query > /dev/null 2>&1; then
  echo "system_packages.sh: no dpkg here; make sure these (Debian names) are installed: ${wanted[*]}" >&2
  exit 0
fi

missing=()
for package in "${wanted[@]}"; do
  if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2> /dev/null)" != "installed" ]]; then
    missing+=("$package")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

install_command="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [[ "$(id -u)" != "0" ]]; then
  echo "adrank needs Debian packages that are missing; run: sudo sh -c '$install_command'" >&2
  exit 1
fi
echo "system_packages.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
