#!/usr/bin/env bash
# serve_compare.sh — moetune's server beside llama.cpp's (llama-cpp-python's server) on the same
# model and machine, driven by the same load generator (`moetune bench serve`, streamed greedy
# completions at 1, 8 and 32 concurrent requests). The peers live in a virtual environment
# outside the repository; the test suite never needs them.
#   VENV=/work/venv LLAMA_SRC=/path/to/llama.cpp THREADS=1 bash bench/serve_compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/work/venv}
LLAMA_SRC=${LLAMA_SRC:?set LLAMA_SRC to vendor/llama.cpp of llama-cpp-python\'s source distribution}
THREADS=${THREADS:-1}
OUT=${OUT:-/tmp/moetune-serve-compare}
PORT=${PORT:-8765}
mkdir -p "$OUT"
[ -d "$OUT/small" ] || build/moetune init --preset small --seed 3 --tokenizer tests/fixtures/tokenizers/deepseek_v3 "$OUT/small"
[ -f "$OUT/small-f32.gguf" ] || "$VENV/bin/python" bench/llamacpp_convert.py "$LLAMA_SRC" convert_hf_to_gguf.py \
  "$OUT/small" --outfile "$OUT/small-f32.gguf" --outtype f32

echo "== llama.cpp (llama-cpp-python server, $THREADS thread(s))"
# interrupt_requests False: by default a new request cancels the one running
"$VENV/bin/python" -m llama_cpp.server --model "$OUT/small-f32.gguf" --n_threads "$THREADS" \
  --n_threads_batch "$THREADS" --n_ctx 4096 --host 127.0.0.1 --port "$PORT" --interrupt_requests False \
  >"$OUT/llama-server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "127.0.0.1:$PORT/v1/models" >/dev/null && break; sleep 1; done
build/moetune bench serve --port "$PORT" --base-model "$OUT/small-f32.gguf" --max-tokens 64
kill $pid
trap - EXIT

echo "== moetune ($THREADS thread(s))"
build/moetune bench serve --model "$OUT/small" --adapters 32 --rank 16 --max-tokens 64 --threads "$THREADS"
