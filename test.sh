#!/usr/bin/env bash
# test.sh — README command 2: installs what is missing, builds with warnings as errors, and runs
# the whole test suite. `--sanitize` builds and runs it under AddressSanitizer + UBSan instead.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--sanitize" ]; then
  scripts/setup.sh build-sanitize -DMOETUNE_SANITIZE=ON -DMOETUNE_CUDA=OFF -DMOETUNE_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  ctest --test-dir build-sanitize --output-on-failure -j "$(nproc)"
else
  scripts/setup.sh build -DMOETUNE_WERROR=ON
  ctest --test-dir build --output-on-failure -j "$(nproc)"
fi
