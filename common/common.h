/* common.h — what every moetune room shares: status codes and error messages, assertions,
 * seeded random numbers, SHA-256, and small file helpers (read whole, atomic write).
 * It depends on nothing but libc; every other room may use it. */
#ifndef MT_COMMON_H
#define MT_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MT_VERSION "0.1.0"

/* ---- status and errors (SQLite style: a code, and the message travels beside it) ---- */

typedef enum mt_status {
    MT_OK = 0,
    MT_ERR_IO,          /* open/read/write/fsync/rename failed */
    MT_ERR_FORMAT,      /* a file's content is malformed (safetensors, JSON, YAML, tokenizer) */
    MT_ERR_INVALID,     /* an argument or config value is out of range or of the wrong type */
    MT_ERR_NOMEM,       /* an allocation failed */
    MT_ERR_UNSUPPORTED, /* well-formed but not something moetune handles (unknown model_type) */
    MT_ERR_NOT_FOUND,   /* a named thing (tensor, file, run id) does not exist */
    MT_ERR_DB,          /* SQLite reported an error */
    MT_ERR_NUMERIC,     /* NaN/inf where a finite number was required */
    MT_ERR_INTERRUPTED, /* stopped on request (signal) */
    MT_ERR_EXHAUSTED,   /* a bounded pool ran out (KV blocks, sequence slots): free some, retry */
    MT_STATUS_COUNT
} mt_status;

typedef struct mt_error {
    mt_status code;
    char msg[1024]; /* "path:line: what is wrong", ready for a person to read */
} mt_error;

const char *mt_status_name(mt_status s);

/* Records the first error only: a message set deep in a call chain is the most precise one,
 * so callers higher up do not overwrite it. `err` may be NULL. Returns `code`. */
mt_status mt_error_set(mt_error *err, mt_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix context ("loading model/config.json: ") onto an existing message. */
void mt_error_prefix(mt_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mt_error_clear(mt_error *err);

/* Invariants (programming errors, not bad input): abort with file:line. */
#define MT_ASSERT(cond)                                                                   \
    do {                                                                                  \
        if (!(cond)) mt_assert_fail(#cond, __FILE__, __LINE__);                           \
    } while (0)
_Noreturn void mt_assert_fail(const char *expr, const char *file, int line);

/* Returns the status of a fallible call from the enclosing function when it is not MT_OK (the
 * message is already on the handle or in the mt_error). */
#define MT_TRY(expr)                                                                      \
    do {                                                                                  \
        mt_status mt_try_status_ = (expr);                                                \
        if (mt_try_status_ != MT_OK) return mt_try_status_;                               \
    } while (0)

/* ---- memory ---- */

/* malloc that aborts on failure: only for small bookkeeping where recovery is meaningless.
 * Large buffers (weights, activations) use mt_alloc_aligned and report MT_ERR_NOMEM. */
void *mt_xmalloc(size_t n);
void *mt_xcalloc(size_t n, size_t size);
void *mt_xrealloc(void *p, size_t n);
char *mt_xstrdup(const char *s);
/* 64-byte aligned (cache line, AVX-512), zeroed; NULL on failure. Free with mt_free_aligned. */
void *mt_alloc_aligned(size_t n);
void mt_free_aligned(void *p);

/* ---- random numbers ---- */

/* xoshiro256** with a state that can be saved and restored (checkpoints need bit-identical
 * continuation). Seeded through splitmix64. */
typedef struct mt_rng {
    uint64_t s[4];
} mt_rng;

void mt_rng_seed(mt_rng *r, uint64_t seed);
uint64_t mt_rng_u64(mt_rng *r);
/* uniform in [0, 1) with 24 bits, i.e. exactly representable as float */
float mt_rng_float(mt_rng *r);
/* uniform integer in [0, n) without modulo bias */
uint64_t mt_rng_below(mt_rng *r, uint64_t n);
float mt_rng_normal(mt_rng *r);

/* Stateless counter-based hash (splitmix64 finaliser over key and counter): the same
 * (key, counter) always gives the same bits, so dropout masks can be regenerated in the
 * backward pass instead of stored. */
uint64_t mt_hash_u64(uint64_t key, uint64_t counter);
float mt_hash_float(uint64_t key, uint64_t counter); /* [0, 1) */

/* ---- hashing ---- */

typedef struct mt_sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t nbuf;
} mt_sha256;

void mt_sha256_init(mt_sha256 *s);
void mt_sha256_update(mt_sha256 *s, const void *data, size_t n);
void mt_sha256_final(mt_sha256 *s, uint8_t out[32]);
/* lowercase hex of the SHA-256 of a buffer; out must hold 65 bytes */
void mt_sha256_hex(const void *data, size_t n, char out[65]);
mt_status mt_sha256_file_hex(const char *path, char out[65], mt_error *err);

/* ---- files ---- */

/* Reads a whole file, NUL-terminated (the terminator is not counted in *len). */
mt_status mt_read_file(const char *path, char **out, size_t *len, mt_error *err);
/* Writes through a temporary file in the same folder, fsyncs it, renames it over `path` and
 * fsyncs the folder: a crash leaves either the old file or the new one, never a torn one. */
mt_status mt_write_file_atomic(const char *path, const void *data, size_t len, mt_error *err);
/* The streaming form of mt_write_file_atomic, for files too large to build in memory
 * (model weights): writes go to a temporary file beside `path`; commit fsyncs, renames it
 * over `path` and fsyncs the folder; abort removes it. Commit and abort free the handle. */
typedef struct mt_atomic_file mt_atomic_file;
mt_status mt_atomic_file_open(mt_atomic_file **out, const char *path, mt_error *err);
mt_status mt_atomic_file_write(mt_atomic_file *f, const void *data, size_t len, mt_error *err);
mt_status mt_atomic_file_commit(mt_atomic_file *f, mt_error *err);
void mt_atomic_file_abort(mt_atomic_file *f);
/* mkdir -p */
mt_status mt_mkdirs(const char *path, mt_error *err);
/* fsync of a folder, so that a rename or unlink inside it is durable. */
mt_status mt_fsync_dir(const char *path, mt_error *err);
/* write(2) of all len bytes (EINTR retried), fsync(2) and rename(2) behind the fault hook
 * (mt_fault_io): −1 with errno set on failure. `what` names the file in a trace. */
int mt_fault_write(int fd, const void *data, size_t len, const char *what);
int mt_fault_fsync(int fd, const char *what);
int mt_fault_rename(const char *from, const char *to);
bool mt_path_exists(const char *path);
bool mt_is_dir(const char *path);
/* dst = dir + "/" + name; returns false if it did not fit */
bool mt_path_join(char *dst, size_t cap, const char *dir, const char *name);

/* ---- time ---- */
double mt_now_seconds(void); /* monotonic */

/* ---- fault injection (the crash and fault tests; SQLite's way) ----
 * Every durable step — a write(2), an fsync, a rename, a folder made or removed, a store page
 * written or synced — first calls mt_fault_io; every fallible allocation (mt_malloc and
 * friends, mt_alloc_aligned) first calls mt_fault_alloc. Unarmed, each is one load and a
 * branch. Armed by mt_fault_arm_* or, at the first call, from the environment:
 *   MOETUNE_FAULT=kill:N       the process SIGKILLs itself at the Nth I/O point (crash tests)
 *   MOETUNE_FAULT=enospc:N     the Nth I/O point fails with ENOSPC (eio:N: with EIO)
 *   MOETUNE_FAULT_TRACE=FILE   appends "N kind what" for every I/O point (to choose points)
 * Counting starts at 1 from arming (or process start). */
typedef enum mt_fault_kind {
    MT_FAULT_WRITE,  /* write(2) of a file's bytes */
    MT_FAULT_FSYNC,  /* fsync of a file or folder */
    MT_FAULT_RENAME, /* rename into place */
    MT_FAULT_CREATE, /* a file or folder created */
    MT_FAULT_REMOVE, /* a file or folder removed */
    MT_FAULT_DB,     /* a store page written or synced (SQLite VFS) */
    MT_FAULT_KIND_COUNT
} mt_fault_kind;

/* 0: go ahead; else the errno the caller must fail with (as if the call had returned it). */
int mt_fault_io(mt_fault_kind kind, const char *what);
/* true: the caller must behave as if this allocation had failed. */
bool mt_fault_alloc(size_t n);
/* The nth I/O point from now fails with errno_value (0 = SIGKILL instead); persistent: every
 * later one fails too (a full disk stays full). n = 0 disarms. */
void mt_fault_arm_io(int64_t n, int errno_value, bool persistent);
/* The nth fallible allocation from now fails (and every later one when persistent). */
void mt_fault_arm_alloc(int64_t n, bool persistent);
void mt_fault_disarm(void);
/* I/O points and fallible allocations seen since arming (a sweep's upper bound). */
int64_t mt_fault_io_count(void);
int64_t mt_fault_alloc_count(void);
/* Whether any fault is armed (the store installs its checking VFS only then). */
bool mt_fault_armed(void);

/* Fallible allocation: NULL on failure (and when mt_fault_alloc says so). Library code uses
 * these where it can report MT_ERR_NOMEM; mt_x* remain for the few places that cannot. */
void *mt_malloc(size_t n);
void *mt_calloc(size_t n, size_t size);
void *mt_realloc(void *p, size_t n);
char *mt_strdup(const char *s);

/* ---- small string helpers ---- */
/* Levenshtein distance, for "did you mean" suggestions on misspelt keys and names. */
int mt_edit_distance(const char *a, const char *b);

#endif
