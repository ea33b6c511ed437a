#!/usr/bin/env bash
# decode_compare.sh — single-stream decode, moetune beside llama.cpp (issue 11): prompt (pp) and
# generated (tg) tokens/s of `moetune bench decode --batch 1` and of `llama-bench` on the same
# model converted to GGUF, at f32, bf16 and 8-bit weights (moetune int8 per-channel groups of 64
# beside llama.cpp q8_0), in ALTERNATING rounds (llama.cpp, moetune, next precision, ...; the
# median of ROUNDS rounds is reported). Plus a long-context row (prompt 4096) on a copy of the
# model with a raised max_position_embeddings, and the memory bandwidth measured in the same run
# (a STREAM triad, a[i] = b[i] + s*c[i], over three 512 MiB float arrays with THREADS OpenMP
# threads, and the same over three 4 MiB arrays, which stay in the L3) to say what fraction of
# the limit the weight bytes read per generated token reach.
#
#   LLAMA_SRC=/path/to/llama.cpp bash bench/decode_compare.sh
# env: LLAMA_SRC (vendor/llama.cpp of llama-cpp-python's sdist), LLAMA_BUILD (default
# /tmp/llbuild; llama-bench is built there, CPU only, if missing), VENV (default /work/venv),
# THREADS (default 2), ROUNDS (default 3), OUT (default /tmp/moetune-decode-compare),
# TINY (default models/tiny-base, else /work/main/models/tiny-base), LONG (a tiny-base copy with
# max_position_embeddings >= 4224; made in OUT if unset), MODELS (default "tiny small").
# The peers live outside the repository; the test suite never needs them.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_SRC=${LLAMA_SRC:?set LLAMA_SRC to vendor/llama.cpp of llama-cpp-python\'s source distribution}
LLAMA_BUILD=${LLAMA_BUILD:-/tmp/llbuild}
VENV=${VENV:-/work/venv}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/moetune-decode-compare}
MODELS=${MODELS:-tiny small}
PY="$VENV/bin/python"
MT=build/moetune
mkdir -p "$OUT"
if [ -z "${TINY:-}" ]; then
  TINY=models/tiny-base
  [ -f "$TINY/config.json" ] || TINY=/work/main/models/tiny-base
fi
[ -x "$MT" ] || { echo "build moetune first (scripts/setup.sh build)"; exit 1; }

LB="$LLAMA_BUILD/bin/llama-bench"
if [ ! -x "$LB" ]; then
  cmake -S "$LLAMA_SRC" -B "$LLAMA_BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$LLAMA_BUILD" -j "$THREADS" --target llama-bench >/dev/null
fi

# ---- models: f32 folders, their bf16 copies, GGUF f32 / bf16 / q8_0 -------------------------
to_bf16() { # SRC_DIR DST_DIR: the same model with every floating-point tensor stored as bf16
  [ -f "$2/model.safetensors" ] && return
  mkdir -p "$2"
  cp "$1"/*.json "$2"/
  "$PY" - "$1" "$2" <<'EOF'
import json, sys, torch
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
t = load_file(f"{src}/model.safetensors")
save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in t.items()},
          f"{dst}/model.safetensors", metadata={"format": "pt"})
c = json.load(open(f"{dst}/config.json"))
c["dtype"] = "bfloat16"
json.dump(c, open(f"{dst}/config.json", "w"), indent=2)
EOF
}
declare -A DIR
for name in $MODELS; do
  case $name in
    tiny) DIR[tiny]=$TINY ;;
    small)
      [ -d "$OUT/small" ] || $MT init --preset small --seed 3 --tokenizer tests/fixtures/tokenizers/deepseek_v3 "$OUT/small" >/dev/null
      DIR[small]=$OUT/small ;;
    *) DIR[$name]=$name ;;
  esac
done
if [ -z "${LONG:-}" ]; then
  LONG=$OUT/tiny-long
  if [ ! -f "$LONG/model.safetensors" ]; then
    mkdir -p "$LONG" && cp "$TINY"/* "$LONG"/
    "$PY" -c "import json,sys; p=sys.argv[1]+'/config.json'; c=json.load(open(p)); c['max_position_embeddings']=8192; json.dump(c,open(p,'w'),indent=2)" "$LONG"
  fi
fi
DIR[long]=$LONG
gguf() { # NAME TYPE → path of NAME's GGUF at TYPE (f32, bf16, q8_0), converted on first use
  local g="$OUT/$1-$2.gguf"
  [ -f "$g" ] || "$PY" bench/llamacpp_convert.py "$LLAMA_SRC" convert_hf_to_gguf.py "${DIR[$1]}" \
    --outfile "$g" --outtype "$2" >"$OUT/convert-$1-$2.log" 2>&1
  echo "$g"
}
for name in $MODELS long; do
  to_bf16 "${DIR[$name]}" "$OUT/$name-bf16"
  for ty in f32 bf16 q8_0; do gguf "$name" "$ty" >/dev/null; done
done

# ---- memory bandwidth: STREAM triad ------------------------------------------------------------
cat >"$OUT/triad.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
/* triad N REPS: a = b + s*c over float arrays of N; best GB/s of REPS (bytes: 3 arrays, as STREAM) */
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    int reps = atoi(argv[2]);
    float *a = aligned_alloc(64, n * 4), *b = aligned_alloc(64, n * 4), *c = aligned_alloc(64, n * 4);
#pragma omp parallel for
    for (long i = 0; i < n; i++) a[i] = 0, b[i] = 1, c[i] = 2;
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t = omp_get_wtime();
#pragma omp parallel for
        for (long i = 0; i < n; i++) a[i] = b[i] + 3.0f * c[i];
        t = omp_get_wtime() - t;
        if (3.0 * n * 4 / t / 1e9 > best) best = 3.0 * n * 4 / t / 1e9;
    }
    printf("%.2f %g\n", best, a[n / 2]);
    return 0;
}
EOF
cc -O3 -march=native -fopenmp "$OUT/triad.c" -o "$OUT/triad"
triad_dram() { OMP_NUM_THREADS=$THREADS "$OUT/triad" $((128 << 20)) 10 | cut -d' ' -f1; }  # 3 x 512 MiB
triad_l3() { OMP_NUM_THREADS=$THREADS "$OUT/triad" $((1 << 20)) 2000 | cut -d' ' -f1; }     # 3 x 4 MiB

# ---- alternating rounds -------------------------------------------------------------------
RES=$OUT/results.tsv # engine model precision round pp tg  (tokens/s)
: >"$RES"
BW=$OUT/bandwidth.tsv
: >"$BW"
mt_run() { # MODEL_DIR PROMPT [--quantize int8] → "pp tg"
  local dir=$1 p=$2
  shift 2
  $MT bench decode --model "$dir" --batch 1 --adapters 0 --prompt "$p" --tokens 128 --rounds 1 \
    --threads "$THREADS" "$@" | tee -a "$OUT/moetune.log" | awk '$1 == "1" && NF == 6 {print $2, $3}'
}
ll_run() { # GGUF PROMPT DEPTH → "pp tg tg@depth"  (pp at depth 0, tg128 at depth 0 and at DEPTH)
  local a b
  a=$("$LB" -m "$1" -t "$THREADS" -p "$2" -n 128 -r 1 -o csv 2>>"$OUT/llama.err" | tee -a "$OUT/llama.log" |
    "$PY" -c 'import csv,sys; r={(int(x["n_prompt"]),int(x["n_gen"])):x["avg_ts"] for x in csv.DictReader(sys.stdin)}; print(next(v for k,v in r.items() if k[1]==0), next(v for k,v in r.items() if k[0]==0))')
  b=$("$LB" -m "$1" -t "$THREADS" -p 0 -n 128 -d "$3" -r 1 -o csv 2>>"$OUT/llama.err" | tee -a "$OUT/llama.log" |
    "$PY" -c 'import csv,sys; print([x["avg_ts"] for x in csv.DictReader(sys.stdin)][-1])')
  echo "$a $b"
}
echo "load before: $(uptime)" | tee "$OUT/load.txt"
for r in $(seq "$ROUNDS"); do
  echo "$r dram $(triad_dram)" >>"$BW"
  echo "$r l3 $(triad_l3)" >>"$BW"
  for name in $MODELS long; do
    p=512
    [ "$name" = long ] && p=4096
    for prec in f32 bf16 int8; do
      case $prec in
        f32) g=$(gguf "$name" f32) mdir=${DIR[$name]} q=() ;;
        bf16) g=$(gguf "$name" bf16) mdir=$OUT/$name-bf16 q=() ;;
        int8) g=$(gguf "$name" q8_0) mdir=${DIR[$name]} q=(--quantize int8) ;;
      esac
      read -r lpp ltg ltgd < <(ll_run "$g" "$p" "$p")
      read -r mpp mtg < <(mt_run "$mdir" "$p" "${q[@]}")
      read -r _ mtg0 < <(mt_run "$mdir" 1 "${q[@]}") # tg from an empty cache, as llama-bench's tg128
      printf 'llama %s %s %s %s %s %s\nmoetune %s %s %s %s %s %s\n' "$name" "$prec" "$r" "$lpp" "$ltg" "$ltgd" \
        "$name" "$prec" "$r" "$mpp" "$mtg0" "$mtg" | tee -a "$RES"
    done
  done
done
echo "load after: $(uptime)" | tee -a "$OUT/load.txt"

# ---- table --------------------------------------------------------------------------------
# active parameters (as moetune counts them) and the embedding table (a one-row lookup per token)
: >"$OUT/params.tsv"
for name in $MODELS long; do
  act=$($MT bench decode --model "${DIR[$name]}" --batch 1 --adapters 0 \
    --prompt 1 --tokens 1 --rounds 1 --threads "$THREADS" | sed -n 's/.*M parameters, \([0-9.]*\) M active.*/\1/p')
  vh=$("$PY" -c "import json,sys; c=json.load(open(sys.argv[1]+'/config.json')); print(c['vocab_size']*c['hidden_size'])" "${DIR[$name]}")
  echo "$name $act $vh" >>"$OUT/params.tsv"
done
"$PY" - "$RES" "$BW" "$OUT/params.tsv" "$THREADS" <<'EOF'
import statistics as st, sys
from collections import defaultdict
res, bw, par, threads = sys.argv[1:5]
v = defaultdict(list)
for line in open(res):
    e, m, p, r, pp, tg, tgd = line.split()
    v[(e, m, p)].append((float(pp), float(tg), float(tgd)))
med = {k: [st.median(x[i] for x in xs) for i in range(3)] for k, xs in v.items()}
b = defaultdict(list)
for line in open(bw):
    r, kind, gbs = line.split()
    b[kind].append(float(gbs))
dram, l3 = st.median(b["dram"]), st.median(b["l3"])
params = {l.split()[0]: (float(l.split()[1]) * 1e6, float(l.split()[2])) for l in open(par)}
bpw = {"f32": 4.0, "bf16": 2.0, "int8": 1.0 + 4.0 / 64}  # int8: one f32 scale per 64 weights (q8_0: 34 B / 32)
n = len(next(iter(v.values())))
print(f"\n{threads} thread(s), median of {n} alternating rounds; triad bandwidth: DRAM {dram:.1f} GB/s, "
      f"L3-resident {l3:.1f} GB/s (medians of {len(b['dram'])})\n")
print("| model | weights | pp llama.cpp | pp moetune | ratio | tg llama.cpp | tg moetune | ratio | tg@P llama.cpp | tg@P moetune | ratio | weight MB/token | GB/s llama.cpp / moetune (tg) | of the limit |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
names = []
for (e, m, p) in v:
    if m not in names: names.append(m)
for m in names:
    for p in ("f32", "bf16", "int8"):
        if ("llama", m, p) not in med: continue
        l, t = med[("llama", m, p)], med[("moetune", m, p)]
        act, vh = params[m]
        mb = (act - vh) * bpw[p] / 1e6
        lim, limn = (l3, "L3") if mb < 16 else (dram, "DRAM")
        gl, gm = mb * l[1] / 1e3, mb * t[1] / 1e3
        lname = {"f32": "f32", "bf16": "bf16", "int8": "int8 / q8_0"}[p]
        label = m + (" (P=4096)" if m == "long" else " (P=512)")
        print(f"| {label} | {lname} | {l[0]:.0f} | {t[0]:.0f} | {t[0]/l[0]:.2f} | {l[1]:.0f} | {t[1]:.0f} | {t[1]/l[1]:.2f} | "
              f"{l[2]:.0f} | {t[2]:.0f} | {t[2]/l[2]:.2f} | {mb:.2f} | {gl:.1f} / {gm:.1f} | {100*gl/lim:.0f}% / {100*gm/lim:.0f}% {limn} |")
print("\n(pp: P-token prompt; tg: 128 tokens from an empty cache (llama-bench tg128; moetune --prompt 1);"
      " tg@P: 128 tokens after the P-token prompt (llama-bench -d P; moetune --prompt P); weight MB/token:"
      " (active parameters - the embedding table) x bytes per weight; the limit: the L3 triad when those bytes"
      " fit in 16 MB, else the DRAM triad)")
EOF
