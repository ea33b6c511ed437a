/* matmul.c — dense GEMM on the CPU through OpenBLAS's cblas_sgemm (row-major). OpenBLAS's
 * thread count is process-wide, so it is set to this backend's before each call. */
#include "cpu/cpu-impl.h"

#include <cblas.h>

void mt_cpu_matmul(mt_backend *be, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    MT_ASSERT(m >= 0 && n >= 0 && k >= 0);
    if (m == 0 || n == 0) return;
    /* Checked here because OpenBLAS reports bad leading dimensions by printing to stdout. */
    MT_ASSERT(ldc >= n);
    if (k == 0) { /* nothing to multiply; BLAS semantics leave beta·C */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(size_t)i * ldc + j];
        return;
    }
    MT_ASSERT(lda >= (trans_a ? m : k) && ldb >= (trans_b ? k : n));
    int threads = mt_cpu_nthreads(be);
    if (openblas_get_num_threads() != threads) openblas_set_num_threads(threads);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k,
                alpha, a, lda, b, ldb, beta, c, ldc);
}
