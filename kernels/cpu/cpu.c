/* cpu.c — the CPU backend itself: context and thread count, host memory, the description
 * line (OpenBLAS version and the core type it chose), the vtable, and the OpenBLAS core-type
 * advice for AVX-512 machines (mt_backend_preferred_coretype). */
#include "cpu/cpu-impl.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

float *mt_cpu_scratch(mt_backend *be, size_t per_thread) {
    mt_cpu_ctx *c = mt_cpu_ctx_of(be);
    per_thread = (per_thread + 15) & ~(size_t)15; /* whole cache lines: no false sharing */
    if (per_thread > c->scratch_per_thread) {
        mt_free_aligned(c->scratch);
        c->scratch = mt_alloc_aligned(per_thread * (size_t)c->threads * sizeof(float));
        MT_ASSERT(c->scratch != NULL);
        c->scratch_per_thread = per_thread;
    }
    return c->scratch;
}

/* True when the CPU executes AVX-512 F/BW/DQ/VL and the OS saves the ZMM state (libgcc's
 * __builtin_cpu_supports checks XCR0 through xgetbv, not just the CPUID bits). */
static bool cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
    return false;
#endif
}

static bool corename_is_avx512(const char *core) {
    static const char *const avx512_cores[] = {"skylakex", "cooperlake", "sapphirerapids"};
    for (size_t i = 0; i < sizeof avx512_cores / sizeof avx512_cores[0]; i++)
        if (core && strncasecmp(core, avx512_cores[i], strlen(avx512_cores[i])) == 0) return true;
    return false;
}

const char *mt_backend_preferred_coretype(void) {
    if (getenv("OPENBLAS_CORETYPE")) return NULL; /* the user's choice stands */
    if (!cpu_has_avx512()) return NULL;           /* SkylakeX kernels would die of SIGILL */
    if (corename_is_avx512(openblas_get_corename())) return NULL;
    return "SkylakeX";
}

static void cpu_free(mt_backend *be) {
    mt_cpu_ctx *c = mt_cpu_ctx_of(be);
    mt_free_aligned(c->scratch);
    free(c);
    free(be);
}

static const char *cpu_describe(const mt_backend *be) { return mt_cpu_ctx_of(be)->describe; }
static int cpu_threads(const mt_backend *be) { return mt_cpu_nthreads(be); }

static bool cpu_supports_op(const mt_backend *be, mt_op op) {
    (void)be;
    return (unsigned)op < MT_OP_COUNT;
}

static void *cpu_alloc(mt_backend *be, size_t bytes) {
    (void)be;
    return mt_alloc_aligned(bytes);
}

static void cpu_release(mt_backend *be, void *p) {
    (void)be;
    mt_free_aligned(p);
}

static void cpu_copy(mt_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    memmove(dst, src, bytes);
}

static void cpu_memset0(mt_backend *be, void *p, size_t bytes) {
    (void)be;
    memset(p, 0, bytes);
}

static void cpu_sync(mt_backend *be) { (void)be; }

static const mt_backend_iface cpu_iface = {
    .kind = MT_BACKEND_CPU,
    .name = "cpu",
    .free = cpu_free,
    .describe = cpu_describe,
    .threads = cpu_threads,
    .supports_op = cpu_supports_op,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_copy,
    .download = cpu_copy,
    .memset0 = cpu_memset0,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .matmul = mt_cpu_matmul,
    .add = mt_cpu_add,
    .scale = mt_cpu_scale,
    .sum_squares = mt_cpu_sum_squares,
    .add_bias = mt_cpu_add_bias,
    .add_bias_backward = mt_cpu_add_bias_backward,
    .copy_2d = mt_cpu_copy_2d,
    .add_2d = mt_cpu_add_2d,
    .embedding_forward = mt_cpu_embedding_forward,
    .embedding_backward = mt_cpu_embedding_backward,
    .rmsnorm_forward = mt_cpu_rmsnorm_forward,
    .rmsnorm_backward = mt_cpu_rmsnorm_backward,
    .rope_forward = mt_cpu_rope_forward,
    .rope_backward = mt_cpu_rope_backward,
    .attention_forward = mt_cpu_attention_forward,
    .attention_backward = mt_cpu_attention_backward,
    .paged_attention_forward = mt_cpu_paged_attention_forward,
    .lowrank_forward = mt_cpu_lowrank_forward,
    .lowp_matmul = mt_cpu_lowp_matmul,
    .lowp_matmul_dx = mt_cpu_lowp_matmul_dx,
    .grouped_matmul = mt_cpu_grouped_matmul,
    .grouped_matmul_backward = mt_cpu_grouped_matmul_backward,
    .swiglu_forward = mt_cpu_swiglu_forward,
    .swiglu_backward = mt_cpu_swiglu_backward,
    .sigmoid_gate_forward = mt_cpu_sigmoid_gate_forward,
    .sigmoid_gate_backward = mt_cpu_sigmoid_gate_backward,
    .route_forward = mt_cpu_route_forward,
    .route_backward = mt_cpu_route_backward,
    .moe_permute = mt_cpu_moe_permute,
    .gather_rows = mt_cpu_gather_rows,
    .gather_rows_backward = mt_cpu_gather_rows_backward,
    .moe_unpermute = mt_cpu_moe_unpermute,
    .moe_unpermute_backward = mt_cpu_moe_unpermute_backward,
    .cross_entropy = mt_cpu_cross_entropy,
    .adamw_step = mt_cpu_adamw_step,
};

/* "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..." → "0.3.21" */
static void openblas_version(char *out, size_t cap) {
    const char *cfg = openblas_get_config();
    const char *p = cfg ? strstr(cfg, "OpenBLAS ") : NULL;
    if (!p) {
        snprintf(out, cap, "?");
        return;
    }
    p += strlen("OpenBLAS ");
    size_t n = strcspn(p, " ");
    if (n >= cap) n = cap - 1;
    memcpy(out, p, n);
    out[n] = '\0';
}

mt_status mt_cpu_backend_init(mt_backend **out, int threads, mt_error *err) {
    if (threads <= 0) threads = omp_get_num_procs();
    if (threads < 1) threads = 1;
    mt_backend *be = calloc(1, sizeof *be);
    mt_cpu_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return mt_error_set(err, MT_ERR_NOMEM, "CPU backend: cannot allocate its context");
    }
    c->threads = threads;
    openblas_set_num_threads(threads);
    char version[32];
    openblas_version(version, sizeof version);
    const char *core = openblas_get_corename();
    const char *advice = mt_backend_preferred_coretype()
                             ? "; AVX-512 unused, OPENBLAS_CORETYPE=SkylakeX would use it"
                             : "";
    snprintf(c->describe, sizeof c->describe, "CPU: %d thread%s, OpenBLAS %s (%s kernels%s)", threads,
             threads == 1 ? "" : "s", version, core ? core : "unknown", advice);
    be->iface = &cpu_iface;
    be->ctx = c;
    *out = be;
    return MT_OK;
}
