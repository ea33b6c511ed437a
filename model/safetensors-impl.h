/* safetensors-impl.h — model/'s private safetensors entry point for bytes already in
 * memory: the fuzzer and the tests feed the parser buffers without touching the disk.
 * Not part of the public API (model/model.h). */
#ifndef MT_SAFETENSORS_IMPL_H
#define MT_SAFETENSORS_IMPL_H

#include "model/model.h"

/* Parses `size` bytes at `data` as one safetensors file, applying every check
 * mt_safetensors_open applies; `name` labels error messages. The bytes are not copied:
 * they must stay valid and unchanged until mt_safetensors_close. */
mt_status mt_safetensors_open_memory(mt_safetensors **out, const void *data, size_t size, const char *name,
                                     mt_error *err);

#endif
