/* cuda.c — the CUDA backend's device management (built with -DMOETUNE_CUDA=ON): device
 * selection, memory, transfers, a cuBLAS handle and the description line. It supports no
 * compute op yet: those kernels are written where a GPU can run their parity tests, so
 * supports_op answers false and the dispatcher refuses every op by name. */
#include "backend-impl.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct mt_cuda_ctx {
    int device;
    cublasHandle_t cublas;
    char describe[256];
} mt_cuda_ctx;

/* Transfers and frees have no error channel in the interface: a failure there means the
 * device is lost or the pointer is not ours, so it aborts with CUDA's own message. */
static void cuda_check(cudaError_t e, const char *what, int line) {
    if (e == cudaSuccess) return;
    char msg[256];
    snprintf(msg, sizeof msg, "%s succeeds (CUDA: %s)", what, cudaGetErrorString(e));
    mt_assert_fail(msg, __FILE__, line);
}
#define CUDA_CHECK(call) cuda_check((call), #call, __LINE__)

static mt_cuda_ctx *ctx_of(const mt_backend *be) { return (mt_cuda_ctx *)be->ctx; }

static void cuda_free(mt_backend *be) {
    mt_cuda_ctx *c = ctx_of(be);
    cublasDestroy(c->cublas);
    free(c);
    free(be);
}

static const char *cuda_describe(const mt_backend *be) { return ctx_of(be)->describe; }
static int cuda_threads(const mt_backend *be) {
    (void)be;
    return 1; /* one stream */
}

static bool cuda_supports_op(const mt_backend *be, mt_op op) {
    (void)be;
    (void)op;
    return false;
}

/* Zeroed like the CPU backend's blocks; NULL on failure (the caller reports MT_ERR_NOMEM). */
static void *cuda_alloc(mt_backend *be, size_t bytes) {
    (void)be;
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError(); /* reset the last-error slot so later checks are not blamed */
        return NULL;
    }
    if (cudaMemset(p, 0, bytes) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_release(mt_backend *be, void *p) {
    (void)be;
    CUDA_CHECK(cudaFree(p));
}

static void cuda_upload(mt_backend *be, void *dst, const void *host_src, size_t bytes) {
    (void)be;
    CUDA_CHECK(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice));
}

static void cuda_download(mt_backend *be, void *host_dst, const void *src, size_t bytes) {
    (void)be;
    CUDA_CHECK(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost));
}

static void cuda_memset0(mt_backend *be, void *p, size_t bytes) {
    (void)be;
    CUDA_CHECK(cudaMemset(p, 0, bytes));
}

static void cuda_copy(mt_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

static void cuda_sync(mt_backend *be) {
    (void)be;
    CUDA_CHECK(cudaDeviceSynchronize());
}

/* Op pointers stay NULL until their kernels exist; the dispatcher never reaches them. */
static const mt_backend_iface cuda_iface = {
    .kind = MT_BACKEND_CUDA,
    .name = "cuda",
    .free = cuda_free,
    .describe = cuda_describe,
    .threads = cuda_threads,
    .supports_op = cuda_supports_op,
    .alloc = cuda_alloc,
    .release = cuda_release,
    .upload = cuda_upload,
    .download = cuda_download,
    .memset0 = cuda_memset0,
    .copy = cuda_copy,
    .sync = cuda_sync,
};

mt_status mt_cuda_backend_init(mt_backend **out, int threads, mt_error *err) {
    (void)threads;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        const char *why = e == cudaSuccess ? "no device" : cudaGetErrorString(e);
        cudaGetLastError();
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "CUDA backend: no CUDA device found (%s)", why);
    }
    const int device = 0;
    struct cudaDeviceProp prop;
    if ((e = cudaSetDevice(device)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess)
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "CUDA backend: device %d: %s", device, cudaGetErrorString(e));
    mt_backend *be = calloc(1, sizeof *be);
    mt_cuda_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return mt_error_set(err, MT_ERR_NOMEM, "CUDA backend: cannot allocate its context");
    }
    cublasStatus_t bs = cublasCreate(&c->cublas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        free(be);
        free(c);
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "CUDA backend: cublasCreate failed: %s",
                            cublasGetStatusString(bs));
    }
    int cublas_version = 0;
    cublasGetVersion(c->cublas, &cublas_version);
    c->device = device;
    snprintf(c->describe, sizeof c->describe, "CUDA: %s, %d SMs, %.1f GiB, compute %d.%d, cuBLAS %d.%d.%d",
             prop.name, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0),
             prop.major, prop.minor, cublas_version / 10000, cublas_version / 100 % 100, cublas_version % 100);
    be->iface = &cuda_iface;
    be->ctx = c;
    *out = be;
    return MT_OK;
}
