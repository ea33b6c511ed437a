/* fuzz_safetensors.c — libFuzzer target for the safetensors reader: the input is one file's
 * bytes, opened in memory; when it opens, every tensor must lie inside the buffer with the
 * size its dtype and shape give, be found by its name, and convert to f32 (float dtypes) or
 * be refused with a message (the others). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/safetensors-impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void st_check(const mt_safetensors *st, const uint8_t *data, size_t size) {
    size_t n = mt_safetensors_count(st);
    for (size_t i = 0; i < n; i++) {
        const mt_st_tensor *t = mt_safetensors_at(st, i);
        const uint8_t *p = t->data;
        if (t->nbytes && (p < data || p > data + size || t->nbytes > (size_t)(data + size - p))) abort();
        if (t->numel < 0 || t->nbytes != (size_t)t->numel * mt_dtype_size(t->dtype)) abort();
        if (t->ndim < 0 || t->ndim > MT_ST_MAX_DIMS) abort();
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        if (numel != t->numel) abort();
        if (mt_safetensors_find(st, t->name) != t) abort();
        /* as many floats as elements; the buffer is exact so ASan sees any overrun */
        float *f = malloc(t->numel ? (size_t)t->numel * sizeof *f : 1);
        mt_error err = {0};
        mt_status s = mt_st_tensor_to_f32(t, f, &err);
        bool is_float = t->dtype == MT_DTYPE_F32 || t->dtype == MT_DTYPE_F16 || t->dtype == MT_DTYPE_BF16 ||
                        t->dtype == MT_DTYPE_F64;
        if ((s == MT_OK) != is_float || (s != MT_OK && !err.msg[0])) abort();
        free(f);
    }
    (void)mt_safetensors_metadata(st, "format");
    (void)mt_safetensors_find(st, "no such tensor");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a private copy, so that reads past the end are overruns ASan reports */
    uint8_t *copy = malloc(size ? size : 1);
    if (size) memcpy(copy, data, size);
    mt_safetensors *st = NULL;
    mt_error err = {0};
    if (mt_safetensors_open_memory(&st, copy, size, "fuzz.safetensors", &err) != MT_OK) {
        if (st || !err.msg[0]) abort(); /* failures leave nothing behind and say why */
        free(copy);
        return 0;
    }
    st_check(st, copy, size);
    mt_safetensors_close(st);
    free(copy);
    return 0;
}
