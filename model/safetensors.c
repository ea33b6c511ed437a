/* safetensors.c — reading and writing Hugging Face safetensors: single files and sharded
 * checkpoints (model.safetensors.index.json), memory-mapped read-only and validated with
 * every check the official Rust reader makes; writing is atomic and streams large data. */
#define _GNU_SOURCE
#include "model/model.h"
#include "safetensors-impl.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Files up to this size are mapped populated (see map_file). */
#define MT_POPULATE_MAX ((size_t)256 << 20)

/* The official reader's limit: a larger header is refused before it is parsed. */
#define ST_MAX_HEADER 100000000ull
/* JSON numbers reach us as doubles; below 2^53 every integer is exact, so larger offsets
 * and dimensions cannot be trusted and are refused (no real file comes near 8 PiB). */
#define ST_MAX_EXACT 9007199254740992.0

/* ---- name lookup: open addressing over an array whose elements each begin with their
 * name (mt_st_tensor, and the parser's entries that embed one first) ---- */

typedef struct st_keys {
    const void *base;
    size_t stride;
} st_keys;

typedef struct st_hash {
    uint32_t *slot; /* element index + 1; 0 = empty */
    size_t mask;
} st_hash;

static const char *key_at(st_keys k, uint32_t i) {
    const char *name;
    memcpy(&name, (const char *)k.base + (size_t)i * k.stride, sizeof name);
    return name;
}

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static void hash_init(st_hash *h, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n + 1) cap <<= 1;
    h->slot = mt_xcalloc(cap, sizeof *h->slot);
    h->mask = cap - 1;
}

static void hash_free(st_hash *h) {
    free(h->slot);
    h->slot = NULL;
    h->mask = 0;
}

static long hash_get(const st_hash *h, st_keys k, const char *name) {
    if (!h->slot) return -1;
    size_t s = (size_t)hash_name(name) & h->mask;
    while (h->slot[s]) {
        if (strcmp(key_at(k, h->slot[s] - 1), name) == 0) return (long)h->slot[s] - 1;
        s = (s + 1) & h->mask;
    }
    return -1;
}

/* Inserts element i; returns false (inserting nothing) when its name is already present.
 * The table must have been sized for every element that will be put. */
static bool hash_put(st_hash *h, st_keys k, uint32_t i) {
    const char *name = key_at(k, i);
    size_t s = (size_t)hash_name(name) & h->mask;
    while (h->slot[s]) {
        if (strcmp(key_at(k, h->slot[s] - 1), name) == 0) return false;
        s = (s + 1) & h->mask;
    }
    h->slot[s] = i + 1;
    return true;
}

static st_keys tensor_keys(const mt_st_tensor *t) { return (st_keys){t, sizeof *t}; }

/* ---- the handle ---- */

typedef struct st_shard {
    char *path;
    const uint8_t *base; /* the whole file */
    size_t size;
    bool mapped; /* munmap on close (false: caller's memory) */
} st_shard;

struct mt_safetensors {
    st_shard *shards;
    int n_shards;
    mt_st_tensor *tensors; /* names owned */
    size_t n;
    st_hash index;
    char **meta; /* key, value, key, value, ... of the first file's __metadata__ */
    size_t n_meta;
};

/* What parsing one file yields before it joins a handle. */
typedef struct st_parsed {
    mt_st_tensor *t; /* in offset order, names owned */
    size_t n;
    st_hash index;
    char **meta;
    size_t n_meta;
} st_parsed;

static void parsed_free(st_parsed *p) {
    for (size_t i = 0; i < p->n; i++) free((char *)p->t[i].name);
    free(p->t);
    hash_free(&p->index);
    for (size_t i = 0; i < 2 * p->n_meta; i++) free(p->meta[i]);
    free(p->meta);
    memset(p, 0, sizeof *p);
}

void mt_safetensors_close(mt_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n_shards; i++) {
        if (st->shards[i].mapped) munmap((void *)st->shards[i].base, st->shards[i].size);
        free(st->shards[i].path);
    }
    free(st->shards);
    for (size_t i = 0; i < st->n; i++) free((char *)st->tensors[i].name);
    free(st->tensors);
    hash_free(&st->index);
    for (size_t i = 0; i < 2 * st->n_meta; i++) free(st->meta[i]);
    free(st->meta);
    free(st);
}

size_t mt_safetensors_count(const mt_safetensors *st) { return st->n; }

const mt_st_tensor *mt_safetensors_at(const mt_safetensors *st, size_t i) {
    return i < st->n ? &st->tensors[i] : NULL;
}

const mt_st_tensor *mt_safetensors_find(const mt_safetensors *st, const char *name) {
    long i = hash_get(&st->index, tensor_keys(st->tensors), name);
    return i < 0 ? NULL : &st->tensors[i];
}

const char *mt_safetensors_metadata(const mt_safetensors *st, const char *key) {
    for (size_t i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[2 * i], key) == 0) return st->meta[2 * i + 1];
    return NULL;
}

/* ---- parsing one file ---- */

/* Strict UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF), and no NUL,
 * which JSON never allows unescaped and which would cut cJSON's C strings short.
 * Returns the offset of the first bad byte, or len. */
static size_t utf8_invalid_at(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c == 0) return i;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return i;
        }
        if (len - i <= n) return i;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += n + 1;
    }
    return len;
}

static const char *json_type_name(const cJSON *v) {
    if (!v) return "nothing";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an unknown value";
}

static bool json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < ST_MAX_EXACT) || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

/* "[2, 2]" into buf, for messages */
static const char *shape_str(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%" PRId64, d ? ", " : "", shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

typedef struct st_entry {
    mt_st_tensor t; /* first: the name lookup reads the name at the element's start */
    uint64_t begin, end;
    size_t order; /* position in the header, to keep sorting deterministic */
} st_entry;

static int entry_cmp(const void *a, const void *b) {
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static mt_status parse_metadata(const char *label, const cJSON *m, st_parsed *out, mt_error *err) {
    if (cJSON_IsNull(m)) return MT_OK;
    if (!cJSON_IsObject(m))
        return mt_error_set(err, MT_ERR_FORMAT, "%s: \"__metadata__\" must be an object of strings, got %s", label,
                            json_type_name(m));
    size_t n = (size_t)cJSON_GetArraySize(m);
    out->meta = mt_xcalloc(2 * n + 1, sizeof *out->meta);
    for (const cJSON *kv = m->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv))
            return mt_error_set(err, MT_ERR_FORMAT, "%s: \"__metadata__\" value of '%s' must be a string, got %s",
                                label, kv->string, json_type_name(kv));
        for (size_t i = 0; i < out->n_meta; i++)
            if (strcmp(out->meta[2 * i], kv->string) == 0)
                return mt_error_set(err, MT_ERR_FORMAT, "%s: \"__metadata__\" has key '%s' twice", label, kv->string);
        out->meta[2 * out->n_meta] = mt_xstrdup(kv->string);
        out->meta[2 * out->n_meta + 1] = mt_xstrdup(kv->valuestring);
        out->n_meta++;
    }
    return MT_OK;
}

/* Reads one tensor entry's dtype, shape and offsets (not yet checked against each other). */
static mt_status parse_entry(const char *label, const cJSON *e, st_entry *out, mt_error *err) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return mt_error_set(err, MT_ERR_FORMAT, "%s: tensor '%s': entry must be an object, got %s", label, name,
                            json_type_name(e));
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt))
        return mt_error_set(err, MT_ERR_FORMAT, "%s: tensor '%s': \"dtype\" must be a string, got %s", label, name,
                            json_type_name(dt));
    if (mt_dtype_from_name(dt->valuestring, &out->t.dtype) != MT_OK)
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "%s: tensor '%s': unknown dtype \"%s\"", label, name,
                            dt->valuestring);
    if (!cJSON_IsArray(shape))
        return mt_error_set(err, MT_ERR_FORMAT, "%s: tensor '%s': \"shape\" must be an array, got %s", label, name,
                            json_type_name(shape));
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > MT_ST_MAX_DIMS)
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "%s: tensor '%s': %d dimensions, more than the %d supported",
                            label, name, ndim, MT_ST_MAX_DIMS);
    out->t.ndim = ndim;
    int d = 0;
    for (const cJSON *v = shape->child; v; v = v->next, d++) {
        uint64_t x;
        if (!json_uint(v, &x))
            return mt_error_set(err, MT_ERR_FORMAT,
                                "%s: tensor '%s': \"shape\" must hold non-negative integers below 2^53, got %s at %d",
                                label, name, json_type_name(v), d);
        out->t.shape[d] = (int64_t)x;
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(offs->child, &out->begin) ||
        !json_uint(offs->child->next, &out->end))
        return mt_error_set(err, MT_ERR_FORMAT,
                            "%s: tensor '%s': \"data_offsets\" must be two non-negative integers [begin, end]",
                            label, name);
    return MT_OK;
}

/* One file's header → tensors in offset order, each checked the way the official reader
 * checks it (safetensors/src/tensor.rs: read_metadata and Metadata::validate). `buf` holds
 * the whole file; tensors point into it. */
static mt_status parse_file(const char *label, const uint8_t *buf, size_t size, int shard, st_parsed *out,
                            mt_error *err) {
    memset(out, 0, sizeof *out);
    if (size < 8)
        return mt_error_set(err, MT_ERR_FORMAT,
                            "%s: %zu bytes is too short for a safetensors file (8-byte header length)", label, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    if (n > ST_MAX_HEADER)
        return mt_error_set(err, MT_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the limit of %llu bytes", label,
                            n, ST_MAX_HEADER);
    if (8 + n > size)
        return mt_error_set(err, MT_ERR_FORMAT,
                            "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)", label, n, size);
    const uint8_t *hdr = buf + 8;
    size_t hlen = (size_t)n;
    size_t bad = utf8_invalid_at(hdr, hlen);
    if (bad != hlen)
        return mt_error_set(err, MT_ERR_FORMAT, "%s: header is not valid UTF-8 text (byte %zu of the header)", label,
                            bad);
    if (hlen == 0 || hdr[0] != '{')
        return mt_error_set(err, MT_ERR_FORMAT, "%s: header does not start with '{' (not a safetensors file?)", label);

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)hdr, hlen, &end, false);
    if (!root) {
        size_t at = end ? (size_t)(end - (const char *)hdr) : 0;
        return mt_error_set(err, MT_ERR_FORMAT, "%s: header is not valid JSON (error near byte %zu of the header)",
                            label, at);
    }
    mt_status st = MT_OK;
    for (const char *p = end; p < (const char *)hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = mt_error_set(err, MT_ERR_FORMAT, "%s: header has text after its JSON object (byte %zu of the header)",
                              label, (size_t)(p - (const char *)hdr));
            break;
        }
    }
    if (st == MT_OK && !cJSON_IsObject(root))
        st = mt_error_set(err, MT_ERR_FORMAT, "%s: header must be a JSON object", label);
    if (st != MT_OK) {
        cJSON_Delete(root);
        return st;
    }

    size_t count = (size_t)cJSON_GetArraySize(root);
    st_entry *ent = mt_xcalloc(count + 1, sizeof *ent);
    st_keys ekeys = {ent, sizeof *ent};
    size_t ne = 0;
    bool seen_meta = false;
    st_hash seen; /* duplicate names, as entries arrive */
    hash_init(&seen, count);
    for (const cJSON *e = root->child; e && st == MT_OK; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta) st = mt_error_set(err, MT_ERR_FORMAT, "%s: \"__metadata__\" appears twice", label);
            seen_meta = true;
            if (st == MT_OK) st = parse_metadata(label, e, out, err);
            continue;
        }
        st_entry *x = &ent[ne];
        x->order = ne;
        x->t.name = e->string; /* borrowed from the JSON tree until copied below */
        st = parse_entry(label, e, x, err);
        if (st == MT_OK && !hash_put(&seen, ekeys, (uint32_t)ne))
            st = mt_error_set(err, MT_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", label, e->string);
        ne++;
    }
    hash_free(&seen);

    /* Sorted by offsets, the data must tile [0, end) exactly: each tensor begins where the
     * previous one ended, and holds exactly numel · dtype-size bytes. */
    if (st == MT_OK) qsort(ent, ne, sizeof *ent, entry_cmp);
    uint64_t pos = 0;
    char shp[256];
    for (size_t i = 0; i < ne && st == MT_OK; i++) {
        st_entry *x = &ent[i];
        const char *name = x->t.name;
        if (x->end < x->begin) {
            st = mt_error_set(err, MT_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                              label, name, x->begin, x->end);
            break;
        }
        if (x->begin > pos) {
            st = mt_error_set(err, MT_ERR_FORMAT,
                              "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] leave a hole: the previous data ends at %" PRIu64,
                              label, name, x->begin, x->end, pos);
            break;
        }
        if (x->begin < pos) {
            st = mt_error_set(err, MT_ERR_FORMAT,
                              "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] overlap the previous tensor, which ends at %" PRIu64,
                              label, name, x->begin, x->end, pos);
            break;
        }
        uint64_t numel = 1;
        bool overflow = false;
        for (int d = 0; d < x->t.ndim; d++) {
            uint64_t dim = (uint64_t)x->t.shape[d];
            if (dim != 0 && numel > UINT64_MAX / dim) overflow = true;
            numel *= dim;
        }
        size_t esz = mt_dtype_size(x->t.dtype);
        if (!overflow && numel > UINT64_MAX / esz) overflow = true;
        /* Element counts live in int64_t and byte counts in size_t: both must hold them. */
        if (!overflow && (numel > (uint64_t)INT64_MAX || numel * esz > (uint64_t)SIZE_MAX)) overflow = true;
        if (overflow) {
            st = mt_error_set(err, MT_ERR_FORMAT, "%s: tensor '%s': shape %s overflows when multiplied out", label, name,
                              shape_str(shp, sizeof shp, x->t.shape, x->t.ndim));
            break;
        }
        uint64_t need = numel * esz;
        if (x->end - x->begin != need) {
            st = mt_error_set(err, MT_ERR_FORMAT,
                              "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64 " bytes but %s %s needs %" PRIu64,
                              label, name, x->begin, x->end, x->end - x->begin, mt_dtype_name(x->t.dtype),
                              shape_str(shp, sizeof shp, x->t.shape, x->t.ndim), need);
            break;
        }
        x->t.numel = (int64_t)numel;
        x->t.nbytes = (size_t)need;
        pos = x->end;
    }
    if (st == MT_OK && pos + 8 + n != size) {
        if (pos + 8 + n < size)
            st = mt_error_set(err, MT_ERR_FORMAT,
                              "%s: %" PRIu64 " bytes follow the last tensor's data (it ends at byte %" PRIu64 " of %zu)",
                              label, (uint64_t)size - (pos + 8 + n), pos + 8 + n, size);
        else
            st = mt_error_set(err, MT_ERR_FORMAT,
                              "%s: tensor data ends at byte %" PRIu64 " but the file has only %zu bytes (truncated?)",
                              label, pos + 8 + n, size);
    }

    if (st == MT_OK) {
        out->t = mt_xcalloc(ne + 1, sizeof *out->t);
        out->n = ne;
        hash_init(&out->index, ne);
        for (size_t i = 0; i < ne; i++) {
            out->t[i] = ent[i].t;
            out->t[i].name = mt_xstrdup(ent[i].t.name);
            out->t[i].data = hdr + hlen + ent[i].begin;
            out->t[i].shard = shard;
            hash_put(&out->index, tensor_keys(out->t), (uint32_t)i);
        }
    }
    free(ent);
    cJSON_Delete(root);
    if (st != MT_OK) parsed_free(out);
    return st;
}

/* ---- files ---- */

static mt_status map_file(const char *path, st_shard *sh, mt_error *err) {
    memset(sh, 0, sizeof *sh);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mt_error_set(err, errno == ENOENT ? MT_ERR_NOT_FOUND : MT_ERR_IO, "%s: cannot open: %s", path,
                            strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mt_error_set(err, MT_ERR_IO, "%s: not a regular file", path);
    }
    sh->path = mt_xstrdup(path);
    sh->size = (size_t)sb.st_size;
    /* A zero-length mapping is an error in mmap; such a file fails the size check anyway. */
    if (sh->size > 0) {
        /* a small file (an adapter) populated: one call maps every page already in the page
         * cache, instead of a fault per 4 KB when the tensors are first read (most of an
         * adapter's hot-load time). A large one (a base) is not: populating reads the whole file
         * into the process's memory at open, so a 31 GB bf16 base could not even be opened in
         * 24 GB to be quantised, and an int8 base held its bf16 file and its int8 copy at once
         * (OLMoE-1B-7B bench decode --quantize int8: 20.1 GiB peak populated, 7.7 unpopulated). */
        int flags = MAP_PRIVATE | (sh->size <= MT_POPULATE_MAX ? MAP_POPULATE : 0);
        void *p = mmap(NULL, sh->size, PROT_READ, flags, fd, 0);
        if (p == MAP_FAILED) {
            mt_status st = mt_error_set(err, MT_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
            close(fd);
            free(sh->path);
            sh->path = NULL;
            return st;
        }
        sh->base = p;
        sh->mapped = true;
    }
    close(fd);
    return MT_OK;
}

static void unmap(st_shard *sh) {
    if (sh->mapped) munmap((void *)sh->base, sh->size);
    free(sh->path);
    memset(sh, 0, sizeof *sh);
}

/* A handle over exactly one parsed file; takes ownership of both. */
static mt_safetensors *single_handle(st_shard *sh, st_parsed *p) {
    mt_safetensors *st = mt_xcalloc(1, sizeof *st);
    st->shards = mt_xcalloc(1, sizeof *st->shards);
    st->shards[0] = *sh;
    st->n_shards = 1;
    st->tensors = p->t;
    st->n = p->n;
    st->index = p->index;
    st->meta = p->meta;
    st->n_meta = p->n_meta;
    memset(p, 0, sizeof *p);
    memset(sh, 0, sizeof *sh);
    return st;
}

mt_status mt_safetensors_open_memory(mt_safetensors **out, const void *data, size_t size, const char *name,
                                     mt_error *err) {
    *out = NULL;
    st_parsed p;
    mt_status s = parse_file(name, data, size, 0, &p, err);
    if (s != MT_OK) return s;
    st_shard sh = {.path = mt_xstrdup(name), .base = data, .size = size, .mapped = false};
    *out = single_handle(&sh, &p);
    return MT_OK;
}

static mt_status open_single(mt_safetensors **out, const char *path, mt_error *err) {
    st_shard sh;
    mt_status s = map_file(path, &sh, err);
    if (s != MT_OK) return s;
    st_parsed p;
    s = parse_file(path, sh.base, sh.size, 0, &p, err);
    if (s != MT_OK) {
        unmap(&sh);
        return s;
    }
    *out = single_handle(&sh, &p);
    return MT_OK;
}

/* Shard names come from a file we did not write: keep them inside the index's folder. */
static bool shard_name_ok(const char *name) {
    if (name[0] == '\0' || name[0] == '/') return false;
    for (const char *p = name; *p;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return false;
        if (!slash) break;
        p = slash + 1;
    }
    return true;
}

static mt_status open_index(mt_safetensors **out, const char *path, mt_error *err) {
    char *text = NULL;
    size_t len = 0;
    mt_status s = mt_read_file(path, &text, &len, err);
    if (s != MT_OK) return s;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return mt_error_set(err, MT_ERR_FORMAT, "%s: not valid JSON", path);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return mt_error_set(err, MT_ERR_FORMAT, "%s: \"weight_map\" must be an object of tensor name → file name",
                            path);
    }

    char *dir = mt_xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");

    size_t n_map = (size_t)cJSON_GetArraySize(wm);
    /* Entries of the weight map as pseudo-tensors: name first, so the hash can read them. */
    typedef struct {
        const char *name;
        int shard;
    } wm_entry;
    wm_entry *map = mt_xcalloc(n_map + 1, sizeof *map);
    st_keys mkeys = {map, sizeof *map};
    st_hash mseen;
    hash_init(&mseen, n_map);
    char **files = mt_xcalloc(n_map + 1, sizeof *files); /* distinct shard names, first-seen order */
    int n_files = 0;
    size_t nm = 0;
    s = MT_OK;
    for (const cJSON *e = wm->child; e && s == MT_OK; e = e->next) {
        if (!cJSON_IsString(e)) {
            s = mt_error_set(err, MT_ERR_FORMAT, "%s: weight_map entry '%s' must be a file name, got %s", path,
                             e->string, json_type_name(e));
            break;
        }
        if (!shard_name_ok(e->valuestring)) {
            s = mt_error_set(err, MT_ERR_FORMAT, "%s: weight_map entry '%s' names '%s', which is outside the folder",
                             path, e->string, e->valuestring);
            break;
        }
        map[nm].name = e->string;
        if (!hash_put(&mseen, mkeys, (uint32_t)nm)) {
            s = mt_error_set(err, MT_ERR_FORMAT, "%s: weight_map names tensor '%s' twice", path, e->string);
            break;
        }
        int f = 0;
        while (f < n_files && strcmp(files[f], e->valuestring) != 0) f++;
        if (f == n_files) files[n_files++] = e->valuestring;
        map[nm].shard = f;
        nm++;
    }
    hash_free(&mseen);

    st_shard *shards = mt_xcalloc((size_t)n_files + 1, sizeof *shards);
    st_parsed *parsed = mt_xcalloc((size_t)n_files + 1, sizeof *parsed);
    int opened = 0;
    for (int f = 0; f < n_files && s == MT_OK; f++) {
        size_t cap = strlen(dir) + strlen(files[f]) + 2;
        char *fpath = mt_xmalloc(cap);
        mt_path_join(fpath, cap, dir, files[f]);
        if (!mt_path_exists(fpath)) {
            const char *example = NULL;
            for (size_t i = 0; i < nm && !example; i++)
                if (map[i].shard == f) example = map[i].name;
            s = mt_error_set(err, MT_ERR_NOT_FOUND, "%s: weight_map maps '%s' to '%s', which does not exist", path,
                             example, files[f]);
        } else {
            s = map_file(fpath, &shards[f], err);
            if (s == MT_OK) {
                opened++;
                s = parse_file(fpath, shards[f].base, shards[f].size, f, &parsed[f], err);
            }
        }
        free(fpath);
    }

    /* Only what the weight map lists is exposed, as transformers does; each listed tensor
     * must be in the shard it is mapped to. */
    bool *used = NULL;
    size_t *first = mt_xcalloc((size_t)n_files + 1, sizeof *first); /* offset of shard f's flags */
    size_t total = 0;
    for (int f = 0; f < n_files; f++) {
        first[f] = total;
        total += parsed[f].n;
    }
    used = mt_xcalloc(total + 1, sizeof *used);
    for (size_t i = 0; i < nm && s == MT_OK; i++) {
        int f = map[i].shard;
        long k = hash_get(&parsed[f].index, tensor_keys(parsed[f].t), map[i].name);
        if (k < 0)
            s = mt_error_set(err, MT_ERR_NOT_FOUND, "%s: weight_map maps '%s' to '%s', but that file does not hold it",
                             path, map[i].name, files[f]);
        else
            used[first[f] + (size_t)k] = true;
    }

    if (s == MT_OK) {
        mt_safetensors *st = mt_xcalloc(1, sizeof *st);
        st->shards = shards;
        st->n_shards = n_files;
        st->tensors = mt_xcalloc(nm + 1, sizeof *st->tensors);
        hash_init(&st->index, nm);
        for (int f = 0; f < n_files; f++) {
            for (size_t k = 0; k < parsed[f].n; k++) {
                if (!used[first[f] + k]) continue;
                st->tensors[st->n] = parsed[f].t[k];
                parsed[f].t[k].name = NULL; /* ownership moves to the handle */
                hash_put(&st->index, tensor_keys(st->tensors), (uint32_t)st->n);
                st->n++;
            }
        }
        if (n_files > 0) {
            st->meta = parsed[0].meta;
            st->n_meta = parsed[0].n_meta;
            parsed[0].meta = NULL;
            parsed[0].n_meta = 0;
        }
        *out = st;
        shards = NULL;
    }
    for (int f = 0; f < n_files; f++) parsed_free(&parsed[f]);
    if (shards) {
        for (int f = 0; f < opened; f++) unmap(&shards[f]);
        free(shards);
    }
    free(parsed);
    free(used);
    free(first);
    free(files);
    free(map);
    free(dir);
    cJSON_Delete(root);
    return s;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

mt_status mt_safetensors_open(mt_safetensors **out, const char *path, mt_error *err) {
    *out = NULL;
    if (mt_is_dir(path)) {
        size_t cap = strlen(path) + 64;
        char *p = mt_xmalloc(cap);
        mt_status s;
        mt_path_join(p, cap, path, "model.safetensors.index.json");
        if (mt_path_exists(p)) {
            s = open_index(out, p, err);
        } else {
            mt_path_join(p, cap, path, "model.safetensors");
            if (mt_path_exists(p))
                s = open_single(out, p, err);
            else
                s = mt_error_set(err, MT_ERR_NOT_FOUND,
                                 "%s: holds neither model.safetensors nor model.safetensors.index.json", path);
        }
        free(p);
        return s;
    }
    if (ends_with(path, ".json")) return open_index(out, path, err);
    return open_single(out, path, err);
}

/* ---- conversion ---- */

static uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t load_u64(const uint8_t *p) { return (uint64_t)load_u32(p) | ((uint64_t)load_u32(p + 4) << 32); }

mt_status mt_st_tensor_to_f32(const mt_st_tensor *t, float *dst, mt_error *err) {
    /* Tensor data follows a header of any length, so it may be misaligned: read bytes. */
    const uint8_t *p = t->data;
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
    case MT_DTYPE_F32:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (n) memcpy(dst, p, n * sizeof(float));
#else
        for (size_t i = 0; i < n; i++) {
            uint32_t u = load_u32(p + 4 * i);
            memcpy(&dst[i], &u, sizeof u);
        }
#endif
        return MT_OK;
    case MT_DTYPE_F16:
        for (size_t i = 0; i < n; i++) dst[i] = mt_f16_to_f32(load_u16(p + 2 * i));
        return MT_OK;
    case MT_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = mt_bf16_to_f32(load_u16(p + 2 * i));
        return MT_OK;
    case MT_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            uint64_t u = load_u64(p + 8 * i);
            double d;
            memcpy(&d, &u, sizeof d);
            dst[i] = (float)d;
        }
        return MT_OK;
    default:
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "tensor '%s': cannot convert %s to f32 (F32, F16, BF16, F64 only)",
                            t->name, mt_dtype_name(t->dtype));
    }
}

/* ---- writing ---- */

struct mt_st_writer {
    mt_st_tensor *t; /* data points at the caller's f32 source; names owned */
    size_t n, cap;
    st_hash index;   /* names must be unique */
    char **meta;     /* key, value, ... */
    size_t n_meta;
};

mt_st_writer *mt_st_writer_init(void) { return mt_xcalloc(1, sizeof(mt_st_writer)); }

void mt_st_writer_free(mt_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free((char *)w->t[i].name);
    free(w->t);
    hash_free(&w->index);
    for (size_t i = 0; i < 2 * w->n_meta; i++) free(w->meta[i]);
    free(w->meta);
    free(w);
}

void mt_st_writer_add(mt_st_writer *w, const char *name, mt_dtype dtype, int ndim, const int64_t *shape,
                      const float *data) {
    MT_ASSERT(dtype == MT_DTYPE_F32 || dtype == MT_DTYPE_F16 || dtype == MT_DTYPE_BF16);
    MT_ASSERT(ndim >= 0 && ndim <= MT_ST_MAX_DIMS);
    MT_ASSERT(strcmp(name, "__metadata__") != 0);
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->t = mt_xrealloc(w->t, w->cap * sizeof *w->t);
        /* The table is sized for the capacity, so it is rebuilt whenever that grows. */
        hash_free(&w->index);
        hash_init(&w->index, w->cap);
        for (size_t i = 0; i < w->n; i++) hash_put(&w->index, tensor_keys(w->t), (uint32_t)i);
    }
    mt_st_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = mt_xstrdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        MT_ASSERT(shape[d] >= 0);
        MT_ASSERT(shape[d] == 0 || numel <= INT64_MAX / shape[d]);
        t->shape[d] = shape[d];
        numel *= shape[d];
    }
    t->numel = numel;
    t->nbytes = (size_t)numel * mt_dtype_size(dtype);
    t->data = data;
    MT_ASSERT(numel == 0 || data != NULL);
    MT_ASSERT(hash_put(&w->index, tensor_keys(w->t), (uint32_t)w->n));
    w->n++;
}

void mt_st_writer_set_metadata(mt_st_writer *w, const char *key, const char *value) {
    for (size_t i = 0; i < w->n_meta; i++) {
        if (strcmp(w->meta[2 * i], key) == 0) {
            free(w->meta[2 * i + 1]);
            w->meta[2 * i + 1] = mt_xstrdup(value);
            return;
        }
    }
    w->meta = mt_xrealloc(w->meta, 2 * (w->n_meta + 1) * sizeof *w->meta);
    w->meta[2 * w->n_meta] = mt_xstrdup(key);
    w->meta[2 * w->n_meta + 1] = mt_xstrdup(value);
    w->n_meta++;
}

/* A growing string for headers and index files. */
typedef struct st_buf {
    char *s;
    size_t len, cap;
} st_buf;

static void buf_add(st_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        while (b->len + n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 4096;
        b->s = mt_xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void buf_str(st_buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_printf(st_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(st_buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    MT_ASSERT(n >= 0 && (size_t)n < sizeof tmp);
    buf_add(b, tmp, (size_t)n);
}

/* A JSON string literal; bytes ≥ 0x80 pass through (names are UTF-8). */
static void buf_json_str(st_buf *b, const char *s) {
    buf_str(b, "\"");
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            buf_add(b, esc, 2);
        } else if (c < 0x20) {
            buf_printf(b, "\\u%04x", c);
        } else {
            buf_add(b, p, 1);
        }
    }
    buf_str(b, "\"");
}

/* Writes the tensors sel[0..n) of w, in that order, as one safetensors file. */
static mt_status write_file(const mt_st_writer *w, const size_t *sel, size_t n, const char *path, mt_error *err) {
    st_buf h = {0};
    buf_str(&h, "{");
    bool first = true;
    if (w->n_meta > 0) {
        buf_str(&h, "\"__metadata__\":{");
        for (size_t i = 0; i < w->n_meta; i++) {
            if (i) buf_str(&h, ",");
            buf_json_str(&h, w->meta[2 * i]);
            buf_str(&h, ":");
            buf_json_str(&h, w->meta[2 * i + 1]);
        }
        buf_str(&h, "}");
        first = false;
    }
    uint64_t off = 0;
    for (size_t k = 0; k < n; k++) {
        const mt_st_tensor *t = &w->t[sel[k]];
        if (!first) buf_str(&h, ",");
        first = false;
        buf_json_str(&h, t->name);
        buf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", mt_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) buf_printf(&h, "%s%" PRId64, d ? "," : "", t->shape[d]);
        buf_printf(&h, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + t->nbytes);
        off += t->nbytes;
    }
    buf_str(&h, "}");
    /* Padding to a multiple of 8 keeps every tensor's data 8-byte aligned in the file, so
     * readers that map it can use it in place (the official writer does the same). */
    while (h.len % 8) buf_str(&h, " ");

    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));

    mt_atomic_file *f = NULL;
    mt_status s = mt_atomic_file_open(&f, path, err);
    if (s == MT_OK) s = mt_atomic_file_write(f, len8, 8, err);
    if (s == MT_OK) s = mt_atomic_file_write(f, h.s, h.len, err);
    free(h.s);

    enum { CHUNK = 1 << 14 };
    uint8_t *chunk = mt_xmalloc(CHUNK * 4);
    for (size_t k = 0; k < n && s == MT_OK; k++) {
        const mt_st_tensor *t = &w->t[sel[k]];
        const float *src = t->data;
        for (int64_t i0 = 0; i0 < t->numel && s == MT_OK; i0 += CHUNK) {
            size_t m = (size_t)(t->numel - i0 < CHUNK ? t->numel - i0 : CHUNK);
            size_t bytes = 0;
            for (size_t i = 0; i < m; i++) {
                float x = src[i0 + (int64_t)i];
                if (t->dtype == MT_DTYPE_F32) {
                    uint32_t u;
                    memcpy(&u, &x, sizeof u);
                    for (int b = 0; b < 4; b++) chunk[bytes++] = (uint8_t)(u >> (8 * b));
                } else {
                    uint16_t u = t->dtype == MT_DTYPE_F16 ? mt_f32_to_f16(x) : mt_f32_to_bf16(x);
                    chunk[bytes++] = (uint8_t)u;
                    chunk[bytes++] = (uint8_t)(u >> 8);
                }
            }
            s = mt_atomic_file_write(f, chunk, bytes, err);
        }
    }
    free(chunk);
    if (!f) return s;
    if (s != MT_OK) {
        mt_atomic_file_abort(f);
        return s;
    }
    return mt_atomic_file_commit(f, err);
}

mt_status mt_st_writer_save(const mt_st_writer *w, const char *path, mt_error *err) {
    size_t *sel = mt_xmalloc((w->n + 1) * sizeof *sel);
    for (size_t i = 0; i < w->n; i++) sel[i] = i;
    mt_status s = write_file(w, sel, w->n, path, err);
    free(sel);
    return s;
}

/* "model-00002-of-00005.safetensors" → (2, 5) */
static bool parse_shard_name(const char *name, int *idx, int *total) {
    if (strlen(name) != strlen("model-00001-of-00001.safetensors")) return false;
    if (strncmp(name, "model-", 6) != 0 || strncmp(name + 11, "-of-", 4) != 0 || strcmp(name + 20, ".safetensors") != 0)
        return false;
    int a = 0, b = 0;
    for (int i = 0; i < 5; i++) {
        char c1 = name[6 + i], c2 = name[15 + i];
        if (c1 < '0' || c1 > '9' || c2 < '0' || c2 > '9') return false;
        a = a * 10 + (c1 - '0');
        b = b * 10 + (c2 - '0');
    }
    *idx = a;
    *total = b;
    return true;
}

static mt_status remove_if_present(const char *dir, const char *name, mt_error *err) {
    size_t cap = strlen(dir) + strlen(name) + 2;
    char *p = mt_xmalloc(cap);
    mt_path_join(p, cap, dir, name);
    mt_status s = MT_OK;
    if (unlink(p) != 0 && errno != ENOENT)
        s = mt_error_set(err, MT_ERR_IO, "%s: cannot remove stale file: %s", p, strerror(errno));
    free(p);
    return s;
}

/* After a save, files of an earlier save that the new one does not overwrite would be
 * mistaken for part of it (a leftover index wins over model.safetensors): remove them. */
static mt_status remove_stale(const char *dir, int n_shards, mt_error *err) {
    mt_status s = remove_if_present(dir, n_shards == 1 ? "model.safetensors.index.json" : "model.safetensors", err);
    DIR *d = opendir(dir);
    if (!d) return s != MT_OK ? s : mt_error_set(err, MT_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    /* Names are collected first: unlinking while readdir walks the folder is unspecified. */
    char **stale = NULL;
    size_t n_stale = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int idx, total;
        if (!parse_shard_name(e->d_name, &idx, &total)) continue;
        if (n_shards > 1 && total == n_shards && idx >= 1 && idx <= n_shards) continue;
        stale = mt_xrealloc(stale, (n_stale + 1) * sizeof *stale);
        stale[n_stale++] = mt_xstrdup(e->d_name);
    }
    closedir(d);
    for (size_t i = 0; i < n_stale; i++) {
        mt_status r = remove_if_present(dir, stale[i], err);
        if (s == MT_OK) s = r;
        free(stale[i]);
    }
    free(stale);
    return s;
}

static int name_cmp(const void *a, const void *b, void *ctx) {
    const mt_st_writer *w = ctx;
    return strcmp(w->t[*(const size_t *)a].name, w->t[*(const size_t *)b].name);
}

mt_status mt_st_writer_save_sharded(const mt_st_writer *w, const char *dir, size_t max_shard_bytes, mt_error *err) {
    mt_status s = mt_mkdirs(dir, err);
    if (s != MT_OK) return s;
    /* Insertion order is kept; a shard closes when the next tensor would overflow it, and a
     * tensor larger than the limit gets a shard of its own (as huggingface_hub splits). */
    int *shard_of = mt_xcalloc(w->n + 1, sizeof *shard_of);
    int n_shards = 1;
    size_t cur = 0;
    for (size_t i = 0; i < w->n; i++) {
        size_t b = w->t[i].nbytes;
        if (max_shard_bytes > 0 && cur > 0 && cur + b > max_shard_bytes) {
            n_shards++;
            cur = 0;
        }
        shard_of[i] = n_shards - 1;
        cur += b;
    }
    size_t cap = strlen(dir) + 64;
    char *path = mt_xmalloc(cap);
    if (n_shards == 1) {
        mt_path_join(path, cap, dir, "model.safetensors");
        s = mt_st_writer_save(w, path, err);
    } else {
        size_t *sel = mt_xmalloc((w->n + 1) * sizeof *sel);
        for (int f = 0; f < n_shards && s == MT_OK; f++) {
            size_t m = 0;
            for (size_t i = 0; i < w->n; i++)
                if (shard_of[i] == f) sel[m++] = i;
            snprintf(path, cap, "%s/model-%05d-of-%05d.safetensors", dir, f + 1, n_shards);
            s = write_file(w, sel, m, path, err);
        }
        if (s == MT_OK) {
            /* HF's index: sorted keys, two-space indent, trailing newline. */
            size_t *order = sel;
            for (size_t i = 0; i < w->n; i++) order[i] = i;
            qsort_r(order, w->n, sizeof *order, name_cmp, (void *)w);
            uint64_t total_size = 0, total_params = 0;
            for (size_t i = 0; i < w->n; i++) {
                total_size += w->t[i].nbytes;
                total_params += (uint64_t)w->t[i].numel;
            }
            st_buf b = {0};
            buf_printf(&b, "{\n  \"metadata\": {\n    \"total_parameters\": %" PRIu64 ",\n    \"total_size\": %" PRIu64
                           "\n  },\n  \"weight_map\": {",
                       total_params, total_size);
            for (size_t k = 0; k < w->n; k++) {
                size_t i = order[k];
                buf_str(&b, k ? ",\n    " : "\n    ");
                buf_json_str(&b, w->t[i].name);
                buf_printf(&b, ": \"model-%05d-of-%05d.safetensors\"", shard_of[i] + 1, n_shards);
            }
            buf_str(&b, w->n ? "\n  }\n}\n" : "}\n}\n");
            mt_path_join(path, cap, dir, "model.safetensors.index.json");
            s = mt_write_file_atomic(path, b.s, b.len, err);
            free(b.s);
        }
        free(sel);
    }
    if (s == MT_OK) s = remove_stale(dir, n_shards, err);
    free(path);
    free(shard_of);
    return s;
}
