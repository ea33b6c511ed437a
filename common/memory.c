/* memory.c — checked allocation for bookkeeping, and aligned blocks for tensors and
 * activations. */
#define _DEFAULT_SOURCE /* madvise */
#include "common/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static _Noreturn void out_of_memory(size_t n) {
    fprintf(stderr, "moetune: out of memory allocating %zu bytes\n", n);
    abort();
}

void *mt_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

void *mt_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) out_of_memory(n * size);
    return p;
}

void *mt_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) out_of_memory(n);
    return q;
}

char *mt_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = mt_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

void *mt_malloc(size_t n) { return mt_fault_alloc(n) ? NULL : malloc(n ? n : 1); }

void *mt_calloc(size_t n, size_t size) {
    return mt_fault_alloc(n * size) ? NULL : calloc(n ? n : 1, size ? size : 1);
}

void *mt_realloc(void *p, size_t n) { return mt_fault_alloc(n) ? NULL : realloc(p, n ? n : 1); }

char *mt_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = mt_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void *mt_alloc_aligned(size_t n) {
    if (mt_fault_alloc(n)) return NULL;
    size_t rounded = (n + 63) & ~(size_t)63;
    if (rounded < n) return NULL;
    /* Blocks of weights, activations and adapters are backed by 2 MB pages where the kernel
     * offers them (transparent huge pages in "madvise" mode, Debian's default): first touch
     * then faults once per 2 MB instead of once per 4 KB, which is most of the time taken to
     * hot-load an adapter, and the TLB covers the weights GEMMs stream through. */
    const size_t huge = (size_t)2 << 20;
    if (rounded >= 2 * huge) {
        size_t whole = (rounded + huge - 1) & ~(huge - 1);
        void *p = aligned_alloc(huge, whole);
        if (p) {
            madvise(p, whole, MADV_HUGEPAGE);
            memset(p, 0, whole);
        }
        return p;
    }
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p) memset(p, 0, rounded ? rounded : 64);
    return p;
}

void mt_free_aligned(void *p) { free(p); }
