/* grouped_gemm.c — microbenchmark of mt_grouped_matmul against the per-expert sgemm loop the
 * MoE layer used before (one multithreaded mt_matmul per expert), at OLMoE-1B-7B's expert shapes:
 * 64 experts, hidden 2048, expert width 1024, T tokens x top-8 rows routed at random. Forward of
 * one projection (gate: out 1024, in 2048), its input gradient and its weight gradient; GFLOP/s
 * from the median of the timed repetitions. Other shapes through the environment (GG_EXPERTS,
 * GG_HIDDEN, GG_WIDTH, GG_TOPK). Built by hand against a build folder (see docs/performance.md,
 * "Grouped expert GEMM"):
 *   grouped_gemm THREADS TOKENS [REPS] [bf16] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

static int env_int(const char *name, int def) {
    const char *v = getenv(name);
    return v && atoi(v) > 0 ? atoi(v) : def;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: grouped_gemm THREADS TOKENS [REPS] [bf16]\n");
        return 2;
    }
    const int threads = atoi(argv[1]), tokens = atoi(argv[2]), reps = argc > 3 ? atoi(argv[3]) : 5;
    const int bf16 = argc > 4 && !strcmp(argv[4], "bf16");
    const int E = env_int("GG_EXPERTS", 64), H = env_int("GG_HIDDEN", 2048), IM = env_int("GG_WIDTH", 1024),
              TOPK = env_int("GG_TOPK", 8);
    if (TOPK > E || TOPK > 64 || E > 1024) return 2;
    mt_error err = {0};
    mt_backend *be = NULL;
    if (mt_backend_init(&be, MT_BACKEND_CPU, threads, &err) != MT_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    /* rows per expert: each token picks TOPK distinct experts at random */
    mt_rng rng;
    mt_rng_seed(&rng, 42);
    int32_t off[1025] = {0}, cnt[1024] = {0};
    for (int t = 0; t < tokens; t++) {
        int chosen[64];
        for (int k = 0; k < TOPK; k++) {
            int e, dup;
            do {
                e = (int)mt_rng_below(&rng, E);
                dup = 0;
                for (int j = 0; j < k; j++) dup |= chosen[j] == e;
            } while (dup);
            chosen[k] = e;
            cnt[e]++;
        }
    }
    for (int e = 0; e < E; e++) off[e + 1] = off[e] + cnt[e];
    const int rows = off[E];
    size_t nw = (size_t)IM * H;
    float *x = malloc((size_t)rows * H * sizeof(float)), *y = malloc((size_t)rows * IM * sizeof(float));
    float *dy = malloc((size_t)rows * IM * sizeof(float)), *dx = calloc((size_t)rows * H, sizeof(float));
    float *wall = malloc(nw * E * sizeof(float)), *dwall = calloc(nw * E, sizeof(float));
    uint16_t *wbf = bf16 ? malloc(nw * E * sizeof(uint16_t)) : NULL;
    if (!x || !y || !dy || !dx || !wall || !dwall || (bf16 && !wbf)) return 1;
    for (size_t i = 0; i < (size_t)rows * H; i++) x[i] = mt_rng_float(&rng) - 0.5f;
    for (size_t i = 0; i < (size_t)rows * IM; i++) dy[i] = mt_rng_float(&rng) - 0.5f;
    for (size_t i = 0; i < nw * E; i++) wall[i] = (mt_rng_float(&rng) - 0.5f) * 0.05f;
    const float **w = malloc((size_t)E * sizeof *w);
    float **dw = malloc((size_t)E * sizeof *dw);
    mt_lowp_weight *lw = malloc((size_t)E * sizeof *lw);
    for (int e = 0; e < E; e++) {
        w[e] = bf16 ? NULL : wall + nw * e;
        dw[e] = dwall + nw * e;
        if (bf16) {
            for (size_t i = 0; i < nw; i++) {
                uint32_t u;
                memcpy(&u, &wall[nw * e + i], 4);
                wbf[nw * e + i] = (uint16_t)(u >> 16);
            }
            lw[e] = (mt_lowp_weight){.type = MT_LOWP_BF16, .out = IM, .in = H, .w = wbf + nw * e};
        }
    }
    const double flops = 2.0 * rows * IM * H;
    double *tg = malloc((size_t)reps * sizeof(double)), *tl = malloc((size_t)reps * sizeof(double));
    const char *what[3] = {"forward", "dX", "dW"};
    printf("%s, %d tokens x top-%d = %d rows over %d experts (%.1f per expert), in %d, out %d, %s weights\n",
           mt_backend_describe(be), tokens, TOPK, rows, E, (double)rows / E, H, IM, bf16 ? "bf16" : "fp32");
    for (int kind = 0; kind < 3; kind++) {
        if (bf16 && kind == 2) break; /* a low-precision weight is frozen */
        mt_grouped_proj p = {.out = IM, .f32 = w, .lowp = bf16 ? lw : NULL, .y = y, .dy = dy,
                             .dw = kind == 2 ? dw : NULL};
        for (int r = -1; r < reps; r++) { /* r = −1: warm-up */
            /* alternate grouped and loop inside each repetition: the same machine state */
            double t0 = mt_now_seconds();
            if (kind == 0)
                mt_grouped_matmul(be, E, off, H, x, 1, &p);
            else
                mt_grouped_matmul_backward(be, E, off, H, x, kind == 1 ? dx : NULL, 1, &p);
            double t1 = mt_now_seconds();
            for (int e = 0; e < E; e++) {
                int r0 = off[e], n = off[e + 1] - off[e];
                if (n <= 0) continue;
                if (kind == 0 && bf16)
                    mt_lowp_matmul(be, &lw[e], n, x + (size_t)r0 * H, H, y + (size_t)r0 * IM, IM);
                else if (kind == 0)
                    mt_matmul(be, false, true, n, IM, H, 1.0f, x + (size_t)r0 * H, H, w[e], H, 0.0f,
                              y + (size_t)r0 * IM, IM);
                else if (kind == 1 && bf16)
                    mt_lowp_matmul_dx(be, &lw[e], n, dy + (size_t)r0 * IM, IM, dx + (size_t)r0 * H, H);
                else if (kind == 1)
                    mt_matmul(be, false, false, n, H, IM, 1.0f, dy + (size_t)r0 * IM, IM, w[e], H, 1.0f,
                              dx + (size_t)r0 * H, H);
                else
                    mt_matmul(be, true, false, IM, H, n, 1.0f, dy + (size_t)r0 * IM, IM, x + (size_t)r0 * H, H, 1.0f,
                              dw[e], H);
            }
            double t2 = mt_now_seconds();
            if (r >= 0) {
                tg[r] = t1 - t0;
                tl[r] = t2 - t1;
            }
        }
        double g = median(tg, reps), l = median(tl, reps);
        printf("%-8s grouped %7.1f GFLOP/s (%.1f ms)   per-expert loop %7.1f GFLOP/s (%.1f ms)   ratio %.2fx\n",
               what[kind], flops / g * 1e-9, g * 1e3, flops / l * 1e-9, l * 1e3, l / g);
    }
    printf("sgemm 1024^3 on this backend: %.1f GFLOP/s\n", mt_backend_sgemm_gflops(be, 1024, 3));
    free(tg);
    free(tl);
    free(x);
    free(y);
    free(dy);
    free(dx);
    free(wall);
    free(dwall);
    free(wbf);
    free(w);
    free(dw);
    free(lw);
    mt_backend_free(be);
    return 0;
}
