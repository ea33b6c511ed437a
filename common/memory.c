/* memory.c — checked allocation for bookkeeping, aligned blocks for tensors, and the arena
 * that activations are carved from. */
#include "common/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void *mt_alloc_aligned(size_t n) {
    size_t rounded = (n + 63) & ~(size_t)63;
    if (rounded < n) return NULL;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p) memset(p, 0, rounded ? rounded : 64);
    return p;
}

void mt_free_aligned(void *p) { free(p); }

mt_status mt_arena_init(mt_arena *a, size_t cap, mt_error *err) {
    memset(a, 0, sizeof *a);
    a->base = mt_alloc_aligned(cap);
    if (!a->base) return mt_error_set(err, MT_ERR_NOMEM, "cannot allocate %zu bytes of activation memory", cap);
    a->cap = cap;
    return MT_OK;
}

void mt_arena_free(mt_arena *a) {
    mt_free_aligned(a->base);
    memset(a, 0, sizeof *a);
}

void *mt_arena_alloc(mt_arena *a, size_t n) {
    size_t start = (a->used + 63) & ~(size_t)63;
    MT_ASSERT(start <= a->cap && n <= a->cap - start);
    void *p = a->base + start;
    memset(p, 0, n);
    a->used = start + n;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

size_t mt_arena_mark(const mt_arena *a) { return a->used; }

void mt_arena_reset(mt_arena *a, size_t mark) {
    MT_ASSERT(mark <= a->used);
    a->used = mark;
}
