/* engine.h — the engine room's one public header: the bundled inference engine (a scheduler
 * thread with continuous batching, chunked prefill under a per-step token budget, preemption
 * when KV blocks run out, per-request sampling, many adapters in one batch, a watched adapter
 * folder) and its OpenAI/vLLM-compatible HTTP server (libmicrohttpd) with Prometheus metrics. */
#ifndef MT_ENGINE_H
#define MT_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "kernels/kernels.h"

typedef struct mt_engine mt_engine;

/* One line for a person (adapter loaded, watch event, request refused); the engine never
 * prints. Called from the engine's threads, one call at a time. */
typedef void (*mt_engine_log_fn)(void *user, const char *line);

typedef struct mt_engine_opts {
    const char *model_dir;     /* Hugging Face folder with tokenizer.json */
    const char *served_name;   /* the base's "model" name; NULL = the folder's basename */
    const char *adapters_dir;  /* every PEFT folder in it is servable by its name; NULL = none */
    bool watch;                /* load new and replaced exports in adapters_dir (inotify) */
    int max_loaded;            /* adapters held at once, least recently used evicted; 0 = 64 */
    int max_rank;              /* highest LoRA rank accepted; 0 = 64 */
    int block_size;            /* KV positions per block; 0 = 16 */
    int kv_blocks;             /* blocks in the pool; 0 = enough for max_seqs × 1024 positions */
    int max_seqs;              /* sequences decoding at once (the batch); 0 = 64 */
    int max_batch_tokens;      /* rows per step (decode tokens + prefill chunk); 0 = 256 */
    int max_queue;             /* requests waiting for a slot before 429; 0 = 256 */
    int max_model_len;         /* prompt + completion positions; 0 = the model's */
    int max_tokens;            /* largest max_tokens a request may ask; 0 = max_model_len */
    int max_choices;           /* n × prompts in one request; 0 = 16 */
    const char *store_path;    /* record each request in this SQLite store; NULL = off */
    /* DAP on the decode steps (docs/attention-pruning.md, docs/serving.md). NULL: off unless a
     * request or an adapter asks, with the decoder's sinks/local window/mass floor (1, 1, 0.9).
     * Given: threshold is the server default τ in [0, 1] (0 = off) for a request that names none
     * and whose adapter's metadata carries none; the rest go to mt_decoder_set_dap. */
    const struct mt_dap_opts *dap;
    bool dap_ignore_adapter_thresholds; /* true: an adapter's metadata "dap" is not used */
    /* Adaptive expert counts (docs/attention-pruning.md, docs/serving.md). NULL: off unless a
     * request or an adapter asks. Given: threshold is the server default P in [0, 1] (0 = fixed
     * top_k) for a request that names no expert_threshold and whose adapter's metadata carries
     * no "experts"; min_k/max_k bound the requests that give none. Not kept. */
    const struct mt_adaptive_k *experts;
    bool experts_ignore_adapter_thresholds; /* true: an adapter's metadata "experts" is not used */
    mt_engine_log_fn log;      /* may be NULL */
    void *log_user;
} mt_engine_opts;

/* Loads the model and tokenizer, the adapters of adapters_dir (up to max_loaded), opens the
 * store, and starts the scheduler (and watch, and store writer) threads. The backend stays the
 * caller's and must outlive the engine. */
mt_status mt_engine_init(mt_engine **out, mt_backend *be, const mt_engine_opts *o, mt_error *err);
/* Stops the threads; requests in flight end with an error. NULL is fine. */
void mt_engine_free(mt_engine *e);

/* Loads (or, when replace, reloads as a new version) the adapter folder `path`, which must
 * lie inside adapters_dir after resolving symlinks; a relative path is taken from there.
 * *version may be NULL. MT_ERR_INVALID for a path outside the folder or a name already
 * loaded without replace; the registry's errors otherwise (another base: MT_ERR_INVALID). */
mt_status mt_engine_load_adapter(mt_engine *e, const char *name, const char *path, bool replace, int64_t *version,
                                 mt_error *err);
mt_status mt_engine_unload_adapter(mt_engine *e, const char *name, mt_error *err);
/* Counts for tests and the bench: adapter versions alive, sequences open in the pool. */
int mt_engine_live_versions(mt_engine *e);
int mt_engine_seqs_open(mt_engine *e);
/* Blocks until the watch thread has handled every event seen so far (tests). */
void mt_engine_watch_sync(mt_engine *e);

/* ---- the HTTP server ---- */

typedef struct mt_server mt_server;

typedef struct mt_server_opts {
    const char *host;          /* NULL = 127.0.0.1; "0.0.0.0" or "::" to listen on every interface */
    int port;                  /* 0 = a free port (see mt_server_port) */
    const char *api_key;       /* required as "Authorization: Bearer KEY" on the /v1 routes; NULL = none */
    size_t max_body_bytes;     /* larger request bodies get 413; 0 = 4 MiB */
    int max_connections;       /* open connections; 0 = 512 */
    const char *ui_store;      /* the SQLite store the workbench at / shows (and its pair edits change); NULL = none */
} mt_server_opts;

/* e may be NULL (`moetune ui`): then only /health and the workbench answer, the rest 503. */
mt_status mt_server_start(mt_server **out, mt_engine *e, const mt_server_opts *o, mt_error *err);
int mt_server_port(const mt_server *s);
/* Closes the listening socket, ends streams in flight, waits for the connection threads. */
void mt_server_stop(mt_server *s);

/* ---- `moetune bench serve`: a loopback load generator ---- */

typedef struct mt_bench_serve_opts {
    const char *host;          /* the server to drive; NULL = 127.0.0.1 */
    int port;
    const char *api_key;       /* NULL = none */
    const char *base_model;    /* "model" of base requests */
    const char *const *adapters; /* names for the every-request-on-another-adapter runs */
    int n_adapters;
    const char *prompt;
    int max_tokens;            /* per request (greedy, EOS ignored) */
    int requests;              /* per concurrency level; 0 = 2 × concurrency, at least 8 */
} mt_bench_serve_opts;

typedef struct mt_bench_serve_row {
    char label[64];            /* "base", "8 adapters" */
    int concurrency;
    int requests;
    double seconds;            /* wall time of the level */
    double tokens_per_s;       /* generated tokens / wall time */
    double p50_s, p99_s;       /* request latency */
    double ttft_p50_s;         /* time to the first streamed token */
} mt_bench_serve_row;

/* Writes n random rank-r LoRA adapters (every linear) for the engine's base into dir/bench-NN
 * (the base's hash recorded), for benchmarks that need many distinct adapters. */
mt_status mt_bench_make_adapters(mt_engine *e, const char *dir, int n, int rank, mt_error *err);
/* POST /v1/load_lora_adapter {name, path, load_inplace}: the wall time of the HTTP call. */
mt_status mt_bench_hot_load(const mt_bench_serve_opts *o, const char *name, const char *path, double *http_seconds,
                            mt_error *err);
/* The base's "model" name; the time the last load of `name` took in the registry (−1 if absent). */
const char *mt_engine_served_name(const mt_engine *e);
double mt_engine_adapter_load_seconds(mt_engine *e, const char *name);

/* Runs the levels {1, 8, 32} concurrent streams for the base and with every request on a
 * different adapter, over HTTP (the requests go through the loopback like any client's).
 * rows must hold 6; *n_rows receives how many were filled. */
mt_status mt_bench_serve(const mt_bench_serve_opts *o, mt_bench_serve_row *rows, int *n_rows, mt_error *err);

#endif
