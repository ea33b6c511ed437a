#!/usr/bin/env bash
# crash-soak.sh — the kill-anywhere harness (tests/test_crash.c) with many more kill points than
# the suite runs: each point kills `moetune train` with SIGKILL at a random I/O point or moment
# and resumes it until it completes, then compares everything with an uninterrupted run.
# usage: scripts/crash-soak.sh [POINTS (default 300)] [BUILD_DIR (default build)] [SEED]
# Not part of CI (about 1.5 s a point on 2 cores).
set -euo pipefail
points=${1:-300}
build=${2:-build}
seed=${3:-$RANDOM}
bin="$build/tests/test_crash"
if [ ! -x "$bin" ]; then
    echo "crash-soak: $bin not found; build first (cmake --build $build --target test_crash moetune)" >&2
    exit 2
fi
echo "crash-soak: $points kill points, seed $seed"
MOETUNE_CRASH_POINTS=$points MOETUNE_CRASH_SEED=$seed OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 "$bin"
