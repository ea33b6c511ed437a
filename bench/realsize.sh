#!/usr/bin/env bash
# realsize.sh — speed and memory at the real shapes: `moetune init` writes the published
# configurations of OLMoE-1B-7B and DeepSeek-V2-Lite with random bf16 weights (14 and 31 GB),
# then LoRA r=16 steps (`moetune bench train`) and single-stream decode (`moetune bench decode`)
# run on them, each under /usr/bin/time for its peak RSS and under `timeout`. The read bandwidth
# of the machine is measured in the same run, so that decode's weight bytes per token can be
# set against it. Not run in CI: it needs ~50 GB of disk and takes most of an hour on 2 cores.
# docs/performance.md ("Real-size shapes") records a run.
#
# Usage: bench/realsize.sh [STAGE...]   stages: init membw train decode clean (default: all but clean)
# Environment: MOETUNE (binary, default build/moetune), DIR (default /work/realsize), THREADS (2),
#   SEQ ("512"; "512 2048" for both lengths), CKPT ("none"; e.g. "none layers"), STEP_TIMEOUT (1800 s),
#   OLMOE_BASES ("none int8": model.quantize values for OLMoE), MODELS ("olmoe dsv2lite").
set -euo pipefail
cd "$(dirname "$0")/.."
mt=$(realpath "${MOETUNE:-build/moetune}")
dir=${DIR:-/work/realsize}
threads=${THREADS:-2}
seqs=${SEQ:-512}
ckpts=${CKPT:-none}
step_timeout=${STEP_TIMEOUT:-1800}
olmoe_bases=${OLMOE_BASES:-none int8}
models=${MODELS:-olmoe dsv2lite}
data=$(realpath data/general.jsonl)
stages=${*:-init membw train decode}
mkdir -p "$dir/logs"
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads

# runs a command under timeout and /usr/bin/time; its output and the time report go to logs/NAME.log
timed() {
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" >&2
  local rc=0
  timeout "$limit" /usr/bin/time -v "$@" >"$dir/logs/$name.log" 2>&1 || rc=$?
  grep -E "^(step|tokens/s|peak RSS|GFLOP/s|trainable|prefill|decode|model|  B=|batch)" "$dir/logs/$name.log" >&2 || true
  grep -E "Maximum resident|Elapsed" "$dir/logs/$name.log" >&2 || true
  [ "$rc" = 0 ] || echo "   $name exited with $rc (124: timed out)" >&2
}

recipe() { # NAME MODEL_DIR SEQ TARGETS
  cat >"$dir/$1.yaml" <<EOF
name: realsize-$1
method: sft
model:
  path: $2
adapter:
  type: lora
  r: 16
  alpha: 32
  dropout: 0.05
  targets: $4
  exclude: [gate]
data:
  train: $data
  format: text
  max_seq_len: $3
  packing: true
train:
  seed: 42
  steps: 10
  micro_batch: 1
  grad_accum: 1
  lr: 2e-4
  log_every: 1
output:
  dir: $dir/runs/$1
  adapter: $dir/adapters/$1
EOF
  echo "$dir/$1.yaml"
}

# read bandwidth: sums over 4 GB (far beyond any cache) with all threads, best of 5 passes
membw() {
  if [ ! -x "$dir/membw" ]; then
    cat >"$dir/membw.c" <<'EOF'
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    size_t n = (size_t)1 << 30; /* 4 GB of float */
    float *a = malloc(n * sizeof *a);
    if (!a) return 1;
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023);
    double best = 0, s = 0;
    for (int r = 0; r < 5; r++) {
        double t = omp_get_wtime();
        float tot = 0;
#pragma omp parallel for reduction(+ : tot)
        for (size_t i = 0; i < n; i += 8) {
            float acc = 0; /* 8 independent lanes: the loop vectorises */
            for (int k = 0; k < 8; k++) acc += a[i + k];
            tot += acc;
        }
        t = omp_get_wtime() - t;
        s += tot;
        if (n * sizeof *a / t > best) best = n * sizeof *a / t;
    }
    printf("read bandwidth: %.1f GB/s (%d threads, checksum %g)\n", best / 1e9, omp_get_max_threads(), s);
    return 0;
}
EOF
    cc -O3 -march=native -fopenmp -o "$dir/membw" "$dir/membw.c"
  fi
  "$dir/membw" | tee -a "$dir/logs/membw.log" >&2
}

for stage in $stages; do
  case $stage in
  init)
    for p in olmoe-1b-7b deepseek-v2-lite; do
      [ -f "$dir/$p/model.safetensors" ] || timed "init-$p" 3600 "$mt" init --preset "$p" --threads "$threads" "$dir/$p"
    done
    ;;
  membw) membw ;;
  train)
    # OLMoE: LoRA on every linear but the routers (experts included), bf16 and int8 base.
    # DeepSeek-V2-Lite: the int8 base (15.7 GB) leaves no room for adapters on its 4992
    # routed experts (277 M LoRA parameters, 4.4 GB with gradients and AdamW moments), so
    # LoRA goes on attention, the dense MLP and the shared experts.
    for T in $seqs; do
      for ck in $ckpts; do
        ckset=()
        [ "$ck" = none ] || ckset=(--set "train.checkpointing=$ck")
        r=$(recipe "olmoe-$T" "$dir/olmoe-1b-7b" "$T" all-linear)
        for q in $olmoe_bases; do
          [[ " $models " == *" olmoe "* ]] || continue
          timed "train-olmoe-$q-$T-$ck" "$step_timeout" "$mt" bench train --recipe "$r" --steps 1 \
            --set model.quantize=$q "${ckset[@]}"
        done
        [[ " $models " == *" dsv2lite "* ]] || continue
        r=$(recipe "dsv2lite-$T" "$dir/deepseek-v2-lite" "$T" \
          "[q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj, shared_experts.gate_proj, shared_experts.up_proj, shared_experts.down_proj]")
        timed "train-dsv2lite-int8-$T-$ck" "$step_timeout" "$mt" bench train --recipe "$r" --steps 1 \
          --set model.quantize=int8 "${ckset[@]}"
      done
    done
    ;;
  decode)
    membw
    # single stream, as llama-bench's pp/tg: a 64-token prompt, 32 generated tokens, 3 rounds
    timed decode-olmoe-bf16 1800 "$mt" bench decode --model "$dir/olmoe-1b-7b" --batch 1 --adapters 0 \
      --prompt 64 --tokens 32 --rounds 3 --threads "$threads"
    timed decode-olmoe-int8 1800 "$mt" bench decode --model "$dir/olmoe-1b-7b" --batch 1 --adapters 0 \
      --prompt 64 --tokens 32 --rounds 3 --threads "$threads" --quantize int8
    membw
    ;;
  clean) rm -rf "$dir/olmoe-1b-7b" "$dir/deepseek-v2-lite" "$dir/runs" "$dir/adapters" ;;
  *) echo "realsize.sh: unknown stage '$stage' (init membw train decode clean)" >&2; exit 2 ;;
  esac
done
