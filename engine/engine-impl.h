/* engine-impl.h — what the engine's files share: the request and sample records the HTTP
 * threads and the scheduler thread meet in, request parameters as parsed from JSON, metrics,
 * and the adapter-folder and store-writer helpers. Nothing here is seen outside engine/. */
#ifndef MT_ENGINE_IMPL_H
#define MT_ENGINE_IMPL_H

#include <pthread.h>
#include <stdatomic.h>

#include "engine/engine.h"
#include "model/model.h"
#include "peft/lora.h"
#include "store/store.h"
#include "tokenizer/tokenizer.h"

#define MT_ENG_MAX_STOP 16
#define MT_ENG_MAX_STOP_LEN 256
#define MT_ENG_MAX_TOP_LOGPROBS 20
#define MT_ENG_MAX_STOP_IDS 64
#define MT_ENG_MAX_BIAS 300
#define MT_ENG_NAME_MAX 256

typedef enum mt_eng_endpoint {
    MT_EP_COMPLETIONS = 0,
    MT_EP_CHAT,
    MT_EP_MODELS,
    MT_EP_LOAD_LORA,
    MT_EP_UNLOAD_LORA,
    MT_EP_HEALTH,
    MT_EP_METRICS,
    MT_EP_FEEDBACK,
    MT_EP_OTHER,
    MT_EP_COUNT
} mt_eng_endpoint;

const char *mt_eng_endpoint_path(mt_eng_endpoint ep);

/* ---- a request as the client asked it (after validation) ---- */

typedef struct mt_eng_params {
    char model[MT_ENG_NAME_MAX];  /* "" = the base */
    float temperature;            /* 0 = greedy */
    int top_k;                    /* 0 = off */
    float top_p;                  /* 1 = off */
    uint64_t seed;
    bool seed_given;
    int max_tokens;               /* 0 = what the context leaves */
    int min_tokens;
    int n;
    bool stream, include_usage;
    bool logprobs;                /* chat: logprobs: true; completions: logprobs given */
    int top_logprobs;             /* alternatives per token, 0..20 */
    bool echo;                    /* completions: the prompt text before the completion */
    bool ignore_eos, skip_special;
    float presence_penalty, frequency_penalty, repetition_penalty;
    int n_stop;
    char stop[MT_ENG_MAX_STOP][MT_ENG_MAX_STOP_LEN + 1];
    int n_stop_ids;
    int32_t stop_ids[MT_ENG_MAX_STOP_IDS];
    int n_bias;
    int32_t bias_ids[MT_ENG_MAX_BIAS];
    float bias_values[MT_ENG_MAX_BIAS];
    float dap_threshold;          /* vLLM-style extra parameter, [0, 1]; valid when dap_given */
    bool dap_given;
    float expert_threshold;       /* adaptive expert counts, [0, 1]; valid when experts_given */
    bool experts_given;
    int min_experts, max_experts; /* [1, top_k]; 0 = not given */
} mt_eng_params;

/* The prompts of one request: tokens (already encoded) or, before encoding, text. */
typedef struct mt_eng_prompt {
    char *text;                   /* NULL when given as token ids */
    int32_t *ids;
    int n_ids;
} mt_eng_prompt;

/* A client error: HTTP status and OpenAI's error fields. */
typedef struct mt_eng_http_error {
    int status;                   /* 400, 401, 404, 413, 429, 500, 503 */
    const char *type;             /* "invalid_request_error", ... */
    char param[64];               /* the offending field, "" = null */
    const char *code;             /* NULL = null */
    char message[1024];
} mt_eng_http_error;

/* Parses and validates a /v1/completions or /v1/chat/completions body (JSON text of len
 * bytes, not NUL-terminated). Completions: *prompts receives the prompt(s) (text or token
 * ids); chat: *messages_text the rendered conversation needs the tokenizer, so the messages
 * come back as role/content pairs. Limits: vocab for token ids and logit_bias, max_choices.
 * false with *herr filled on any bad input; nothing a client sends makes it crash. */
typedef struct mt_eng_chat_msgs {
    int n;
    char **role, **content;
} mt_eng_chat_msgs;

typedef struct mt_eng_parse_limits {
    int vocab_size;
    int max_choices;
    int max_prompts;
    int top_k;        /* the model's experts per token: min_experts/max_experts are at most this */
} mt_eng_parse_limits;

bool mt_eng_parse_request(mt_eng_endpoint ep, const char *body, size_t len, const mt_eng_parse_limits *lim,
                          mt_eng_params *p, mt_eng_prompt **prompts, int *n_prompts, mt_eng_chat_msgs *msgs,
                          mt_eng_http_error *herr);
void mt_eng_prompts_free(mt_eng_prompt *p, int n);
void mt_eng_chat_msgs_free(mt_eng_chat_msgs *m);
/* {"lora_name","lora_path"} / {"lora_name"}; strings copied into name/path. */
bool mt_eng_parse_lora(const char *body, size_t len, bool want_path, char *name, size_t name_cap, char *path,
                       size_t path_cap, bool *load_inplace, mt_eng_http_error *herr);
/* A /v1/feedback body: a preference {"chosen_id","rejected_id"[,"chosen_index","rejected_index"]}
 * or a rating {"id"[,"index"],"rating"}, with "dataset", "annotator", "split". Unknown keys are
 * refused by name (a "chosen" meant as "chosen_id" must not pass silently). */
#define MT_ENG_ID_MAX 200
typedef struct mt_eng_feedback {
    bool is_rating;
    char chosen_id[MT_ENG_ID_MAX + 1];   /* rating: the rated response's id */
    char rejected_id[MT_ENG_ID_MAX + 1]; /* "" for a rating */
    int chosen_index, rejected_index;     /* choice indexes, 0 by default */
    double rating;
    char dataset[MT_ENG_NAME_MAX];        /* "served" by default */
    char annotator[MT_ENG_NAME_MAX];      /* "" = none */
    bool eval;                            /* "split": "eval" */
} mt_eng_feedback;
bool mt_eng_parse_feedback(const char *body, size_t len, mt_eng_feedback *f, mt_eng_http_error *herr);
void mt_eng_herr(mt_eng_http_error *h, int status, const char *type, const char *param, const char *code,
                 const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* {"error":{"message","type","param","code"}}, malloc'ed */
char *mt_eng_error_json(const mt_eng_http_error *h);

/* ---- what the scheduler produces, per choice, for the HTTP thread to format ---- */

typedef struct mt_eng_logprob {
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_ids[MT_ENG_MAX_TOP_LOGPROBS];
    float top_lps[MT_ENG_MAX_TOP_LOGPROBS];
} mt_eng_logprob;

typedef enum mt_eng_sample_state {
    MT_SS_WAIT_FORK = 0, /* sibling j > 0 waiting for sample 0 to finish the shared prompt */
    MT_SS_ACTIVE,        /* feeding ctx[fed..n_ctx) into its pool sequence */
    MT_SS_DONE,
} mt_eng_sample_state;

typedef struct mt_eng_req mt_eng_req;

/* One choice of a request. The scheduler thread owns the fields above `out`; the output
 * fields are written by the scheduler and read by the HTTP thread under req->mu. */
typedef struct mt_eng_sample {
    mt_eng_req *req;
    int index;                /* OpenAI choice index: prompt × n + j */
    int group, j;             /* prompt and sample within it */
    int32_t *ctx;             /* [cap_ctx] prompt then generated tokens */
    int n_ctx, cap_ctx, n_prompt;
    int fed;                  /* positions already in the pool sequence */
    int seq;                  /* pool sequence, −1 when none (waiting or preempted) */
    mt_eng_sample_state state;
    uint64_t order;           /* admission order: preemption takes the youngest */
    int64_t skip_step;        /* preempted in this step: not re-admitted before the next */
    mt_rng rng;
    mt_detok *detok;
    int n_gen;
    double t_last;            /* when the previous token came (inter-token latency) */
    uint8_t *seen;            /* [V] tokens of prompt+output for penalties, NULL when none */
    /* output, under req->mu */
    char *out;                /* text that became final */
    size_t out_len, out_cap;
    mt_eng_logprob *lps;      /* [n_lps] when logprobs were asked */
    int n_lps, cap_lps;
    const char *finish;       /* NULL while running: "stop" or "length" */
} mt_eng_sample;

struct mt_eng_req {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;                 /* the HTTP side and the scheduler; freed at 0 */
    mt_eng_endpoint ep;
    mt_eng_params p;
    char model_name[MT_ENG_NAME_MAX]; /* as served: the base's name or the adapter's */
    char adapter[MT_ENG_NAME_MAX];    /* "" for the base */
    mt_adapter_ref ref;       /* held from submission to the end (the version it started with) */
    bool has_ref;
    int n_prompts;
    int *prompt_len;          /* [n_prompts] */
    char *prompt_text;        /* for the store: the first prompt as text; may be NULL */
    char *prompts_json;       /* for the store: chat messages or every prompt's text (JSON); may be NULL */
    char id[48];              /* the response's "id": the name feedback finds it by */
    int n_samples;
    mt_eng_sample *samples;   /* [n_samples] */
    double t_arrival;         /* mt_now_seconds() at submission */
    double t_arrival_unix;
    double t_first;           /* first token of any choice, 0 before */
    atomic_bool cancelled;    /* client went away: the scheduler frees its sequences */
    /* under mu */
    bool done;
    int n_done;
    mt_status status;         /* MT_OK, or why the request failed */
    char errmsg[512];
    int64_t version;          /* adapter version used, 0 for the base */
    float dap_tau;            /* DAP τ of its decode rows: request, else adapter metadata, else server
                                 default; set before submission, read by the scheduler */
    mt_adaptive_k experts;    /* adaptive expert counts of all its rows, resolved as dap_tau is */
    mt_eng_req *next;         /* submission queue link (under the engine's lock) */
};

/* ---- metrics (metrics.c) ---- */

#define MT_HIST_MAX_BUCKETS 20
typedef struct mt_hist {
    int n;
    const double *le;         /* [n] upper bounds; +Inf implied */
    uint64_t counts[MT_HIST_MAX_BUCKETS + 1];
    double sum;
    uint64_t count;
} mt_hist;

#define MT_METRIC_KEYS 512
typedef struct mt_req_counter {
    mt_eng_endpoint ep;
    char model[MT_ENG_NAME_MAX];
    int status;
    uint64_t count;
} mt_req_counter;

typedef struct mt_metrics {
    pthread_mutex_t mu;
    mt_req_counter req[MT_METRIC_KEYS];
    int n_req;
    uint64_t req_overflow;
    mt_hist ttft, itl, e2e;
    uint64_t gen_tokens, prompt_tokens, preemptions, steps;
    mt_dap_counts dap;        /* the decoder's DAP counts (blocks, skipped, fallbacks) summed */
    uint64_t routed_pairs;    /* (row, MoE layer) pairs routed by the decode steps */
    uint64_t experts_used;    /* routed experts over those pairs (top_k each with fixed routing) */
    double tps_window_start;  /* tokens/s over windows of a few seconds */
    uint64_t tps_window_tokens;
    double tps_last;
    int n_moe;                /* MoE layers seen in decode steps */
    int n_experts;
    int *layer;               /* [n_moe] */
    double *entropy_last, *entropy_sum; /* [n_moe] */
    uint64_t *entropy_rows;   /* [n_moe] */
    uint64_t *expert_tokens;  /* [n_moe × n_experts] */
} mt_metrics;

void mt_metrics_init(mt_metrics *m, int n_moe_layers, int n_experts);
void mt_metrics_free(mt_metrics *m);
/* ep/model/status of one finished HTTP request; model "" when not one the server knows. */
void mt_metrics_count_request(mt_metrics *m, mt_eng_endpoint ep, const char *model, int status);
void mt_hist_observe(mt_hist *h, double v);

/* ---- store recording (recorder.c) ---- */

typedef struct mt_recorder mt_recorder;
typedef struct mt_engine mt_engine;
mt_status mt_recorder_start(mt_recorder **out, mt_engine *e, const char *path, mt_error *err);
/* Queues a copy of the row; the writer thread commits batches. Never blocks on SQLite. */
void mt_recorder_push(mt_recorder *r, const mt_store_served *row);
void mt_recorder_stop(mt_recorder *r); /* writes what is queued, then joins */
uint64_t mt_recorder_written(mt_recorder *r);
/* Waits until every row queued before the call is committed (or failed, or was dropped), then
 * calls fn with the writer's store handle, the writer kept off it until fn returns. Feedback
 * uses it: a response the client has seen was queued before the client saw it (record() runs
 * before the request is marked done), so fn finds it in the store. */
mt_status mt_recorder_with_store(mt_recorder *r, mt_status (*fn)(mt_store *s, void *ctx, mt_error *err), void *ctx,
                                 mt_error *err);

/* ---- the engine ---- */

struct mt_engine {
    mt_engine_opts o;
    char served_name[MT_ENG_NAME_MAX];
    char model_dir[4096];
    char adapters_dir[4096];  /* realpath, "" when none */
    mt_model *model;
    mt_tokenizer *tok;
    const mt_config *cfg;
    int vocab;
    int max_model_len;
    int block_size, total_blocks; /* the pool's, fixed at init: HTTP threads check requests against them */
    int n_eos;
    int32_t eos[MT_MAX_EOS + 1];
    char base_hash[65];
    mt_registry *reg;
    pthread_mutex_t load_mu;  /* one load at a time: two requests for one evicted name load it once */
    double t_started;

    /* scheduler: the queue is under mu; everything below `sched` only the scheduler touches */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mt_eng_req *queue_head, *queue_tail;
    int queue_len;
    bool stopping;
    pthread_t thread;
    bool thread_started;
    atomic_int running_seqs, waiting_samples, kv_used, kv_total, seqs_open;

    /* sched */
    mt_kv_pool *pool;
    mt_decoder *dec;
    int max_rows;
    mt_eng_sample **active;   /* [cap_active] admitted samples in admission order */
    int n_active, cap_active;
    uint64_t next_order;
    int64_t step_id;
    int32_t *b_tokens, *b_seq, *b_pos, *b_slot, *b_logit_rows; /* [max_rows] */
    mt_eng_sample **b_sample; /* [max_rows] the sample of each logit row */
    mt_eng_sample **b_rowsample; /* [max_rows] the sample of each row */
    mt_eng_req **b_reqs;      /* [max_rows] distinct requests of a step */
    const mt_adapter **b_adapters; /* [max_rows + 1] */
    float *b_tau;             /* [max_rows] DAP τ of each row (0 on prompt rows) */
    mt_adaptive_k *b_ak;      /* [max_rows] adaptive expert counts of each row */
    int32_t *b_kused;         /* [max_rows] routed experts of each row over the MoE layers */
    mt_dap_counts dap_seen;   /* mt_decoder_dap_stats at the last step: metrics take the delta */
    bool dap_cpu;             /* the backend runs DAP (CPU only) */
    float dap_default;        /* the server default τ */
    mt_adaptive_k expert_default; /* the server default adaptive expert counts (0: fixed top_k) */
    float *logits;            /* [max_rows, V] */
    float *logits_copy;       /* [V] a sibling's copy of its prompt's last logits */
    float *scratch;           /* [V] raw logits kept for logprobs */
    int max_logit_rows;

    mt_metrics metrics;
    mt_recorder *rec;
    atomic_uint_fast64_t next_id;
    uint64_t id_salt;         /* random per engine: response ids differ across restarts on one store */

    /* watch (adapters.c) */
    pthread_t watch_thread;
    bool watch_started;
    int inotify_fd, wake_fd;
    pthread_mutex_t watch_mu;
    pthread_cond_t watch_cv;
    uint64_t watch_seen, watch_done; /* sync tickets asked and served (under watch_mu) */
    uint64_t watch_done_local;        /* the watch thread's own copy */
    bool stopping_watch;

    pthread_mutex_t log_mu;
};

void mt_eng_log(mt_engine *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* scheduler.c */
mt_status mt_eng_sched_start(mt_engine *e, mt_error *err);
void mt_eng_sched_stop(mt_engine *e);
/* Builds a request from parsed parameters and tokenized prompts (ownership of ids moves in);
 * acquires its adapter. herr filled when refused (unknown model, too long, queue full). */
mt_eng_req *mt_eng_req_new(mt_engine *e, mt_eng_endpoint ep, const mt_eng_params *p, mt_eng_prompt *prompts,
                           int n_prompts, mt_eng_http_error *herr);
bool mt_eng_submit(mt_engine *e, mt_eng_req *r, mt_eng_http_error *herr);
void mt_eng_req_unref(mt_engine *e, mt_eng_req *r);
/* The base's served name, or the name of an adapter (loading it from adapters_dir when it is
 * a folder there but not loaded). false when no such model. */
bool mt_eng_resolve_model(mt_engine *e, const char *name, mt_adapter_ref *ref, bool *has_ref, mt_eng_http_error *herr);

/* adapters.c */
mt_status mt_eng_adapters_init(mt_engine *e, mt_error *err);
void mt_eng_adapters_stop(mt_engine *e);
/* adapters_dir/name resolved and checked to lie inside adapters_dir; out receives the real path. */
mt_status mt_eng_confine(const mt_engine *e, const char *path, char *out, size_t cap, mt_error *err);
bool mt_eng_name_ok(const char *name);
/* Folders of adapters_dir that look like PEFT adapters: calls fn for each, sorted by name. */
void mt_eng_list_folders(const mt_engine *e, void (*fn)(void *user, const char *name, const char *path), void *user);

/* ---- the HTTP server (http.c, openai.c) ---- */

struct MHD_Connection;
struct mt_server {
    struct MHD_Daemon *d;
    mt_engine *e;
    mt_server_opts o;
    char *api_key;           /* NULL: no key */
    size_t api_key_len;
    int port;
    atomic_bool stopping;
};

/* Growable byte buffer for response bodies. */
typedef struct mt_eng_buf {
    char *p;
    size_t n, cap;
} mt_eng_buf;
void mt_eng_buf_add(mt_eng_buf *b, const char *s, size_t n);

/* True when the peer of c has closed its side (disconnect mid-request or mid-stream). */
bool mt_eng_client_gone(struct MHD_Connection *c);
/* Queues a response and counts it in the metrics. Returns MHD_YES/MHD_NO as an int. */
int mt_eng_send(mt_server *s, struct MHD_Connection *c, mt_eng_endpoint ep, const char *model, int status,
                const char *content_type, const char *body, size_t len);
int mt_eng_send_error(mt_server *s, struct MHD_Connection *c, mt_eng_endpoint ep, const char *model,
                      const mt_eng_http_error *h);
/* /v1/completions and /v1/chat/completions (openai.c). */
int mt_eng_handle_generate(mt_server *s, struct MHD_Connection *c, mt_eng_endpoint ep, const char *body, size_t len);
/* /v1/feedback (feedback.c). */
int mt_eng_handle_feedback(mt_server *s, struct MHD_Connection *c, const char *body, size_t len);
/* GET / and /ui/...: the workbench page and its JSON (ui.c); s->e may be NULL. */
int mt_eng_handle_ui(mt_server *s, struct MHD_Connection *c, const char *url);
/* POST /ui/api/pairs/ID/swap|drop (ui.c). */
int mt_eng_handle_ui_post(mt_server *s, struct MHD_Connection *c, const char *url, const char *body, size_t len);

/* metrics text (metrics.c) */
char *mt_eng_metrics_text(mt_engine *e);
void mt_eng_metrics_step(mt_engine *e, int n_rows);

#endif
