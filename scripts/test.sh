#!/usr/bin/env bash
# The README's test command: makes this machine ready (packages, CRIU), builds
# with warnings as errors, and runs every test through ctest -- unit tests and
# the integration tests that drive real runc, CRIU, CNI, ZeroMQ and TLS across
# the lab's network-namespace hosts. Exit status is ctest's.
#   scripts/test.sh            everything
#   scripts/test.sh -R REGEX   only matching tests (passed to ctest)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -DMIGRATE_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)"
# Integration tests share the lab's fixed namespace names: run serially.
ctest --test-dir "$build" --output-on-failure --timeout 600 "$@"
