/* store.h — the store room's one public header: the SQLite run store (runs, metrics, events,
 * datasets, adapters, preference pairs) with versioned migrations, and a small SVG plotter that
 * draws the series it is given. The store knows nothing of training: it keeps what it is told. */
#ifndef MT_STORE_H
#define MT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* The schema version this binary writes (PRAGMA user_version). A store with a higher version is
 * refused: an older binary must not write into tables whose meaning it does not know. */
#define MT_STORE_SCHEMA_VERSION 4

typedef struct mt_store mt_store;

/* ====================================== open / close ====================================== */

/* Opens the store at `path`, migrating it to MT_STORE_SCHEMA_VERSION in one transaction.
 * create: make the parent folder and the file when missing; when false a missing file is
 * MT_ERR_NOT_FOUND (a reader such as `moetune runs` must not leave empty stores behind).
 * Errors name the path and carry SQLite's message: MT_ERR_IO (cannot open/create),
 * MT_ERR_FORMAT (not an SQLite database, or not a moetune store), MT_ERR_UNSUPPORTED (schema
 * newer than this binary), MT_ERR_DB (anything else SQLite reports). One handle per thread;
 * close it before fork() and open a new one in the child (SQLite's rule for connections). */
mt_status mt_store_open(mt_store **out, const char *path, bool create, mt_error *err);
void mt_store_close(mt_store *s); /* NULL is fine */
const char *mt_store_path(const mt_store *s);

/* ========================================= runs ========================================= */

typedef enum mt_run_status {
    MT_RUN_RUNNING = 0,
    MT_RUN_COMPLETED,
    MT_RUN_FAILED,
    MT_RUN_INTERRUPTED,
    MT_RUN_STATUS_COUNT
} mt_run_status;

const char *mt_run_status_name(mt_run_status s); /* "running", "completed", ... */

/* What a run is, fixed when it begins. Strings may be NULL (stored as NULL) except name and
 * method. The process id and host name of the caller are recorded by mt_store_run_begin. */
typedef struct mt_store_run_info {
    const char *name;          /* a person's label, e.g. "legal-lora" */
    const char *method;        /* "sft", "dpo", "reward", "ppo", "grpo", ... */
    const char *recipe_text;   /* the YAML as written */
    const char *recipe_sha256; /* hex */
    const char *base_path;     /* base model folder */
    const char *base_hash;     /* content hash of the base weights */
    const char *git_revision;  /* NULL when unknown */
    const char *version;       /* moetune version; NULL means MT_VERSION */
    uint64_t seed;
    const char *config_json; /* validated config as a JSON object; NULL means "{}" */
} mt_store_run_info;

/* Inserts a run with status "running" and returns its id. */
mt_status mt_store_run_begin(mt_store *s, const mt_store_run_info *info, int64_t *run_id, mt_error *err);
/* Sets the status; any status other than running also sets the end time (now). `message` (may
 * be NULL) says why, e.g. the error text of a failed run. */
mt_status mt_store_run_set_status(mt_store *s, int64_t run_id, mt_run_status status, const char *message,
                                  mt_error *err);

/* A resumed run (same id) is running again in this process: status running, end time and
 * message cleared, host and pid now this process's. */
mt_status mt_store_run_resume(mt_store *s, int64_t run_id, mt_error *err);

/* A run as read back. Strings are owned by the record (free with mt_store_run_free); absent
 * values are NULL. Times are Unix seconds (UTC). */
typedef struct mt_store_run {
    int64_t id;
    char *name, *method, *recipe_text, *recipe_sha256, *base_path, *base_hash, *git_revision, *version;
    char *config_json;
    char *status_message;
    char *host;
    int64_t pid;
    uint64_t seed;
    /* Effective status: a "running" run whose process is gone (same host, pid dead or reused)
     * reads as MT_RUN_INTERRUPTED with stale = true; the stored row is left untouched. */
    mt_run_status status;
    bool stale;
    double started;
    double ended;     /* 0 while running and for stale runs */
    double updated;   /* last write of a metric or event (heartbeat); = started before any */
    double duration;  /* seconds: ended, now (alive), or last heartbeat (stale) minus started */
    int64_t last_step;  /* highest step with a metric; -1 when none */
    bool has_loss;      /* a metric named "loss" exists */
    double last_loss;   /* its value at its highest step (NaN when that value was NaN) */
} mt_store_run;

typedef struct mt_store_run_list {
    mt_store_run *items; /* [n], by id */
    size_t n;
} mt_store_run_list;

/* All runs, oldest first; recipe_text and config_json are left NULL (use mt_store_run_get). */
mt_status mt_store_run_list_all(mt_store *s, mt_store_run_list *out, mt_error *err);
/* One run with every field; MT_ERR_NOT_FOUND when there is no such id. */
mt_status mt_store_run_get(mt_store *s, int64_t run_id, mt_store_run *out, mt_error *err);
void mt_store_run_free(mt_store_run *r);
void mt_store_run_list_free(mt_store_run_list *l);

/* ======================================== metrics ======================================== */

typedef struct mt_metric {
    const char *name;
    double value; /* NaN is kept (stored as SQL NULL); ±inf are stored as they are */
} mt_metric;

/* Writes n metrics of one step in ONE transaction: a reader sees all of them or none. Logging a
 * (name, step) again replaces the value (a resumed run re-logs the steps after its checkpoint). */
mt_status mt_store_log_metrics(mt_store *s, int64_t run_id, int64_t step, const mt_metric *m, size_t n,
                               mt_error *err);

typedef struct mt_store_series {
    int64_t *steps; /* [n], increasing */
    double *values; /* [n], NaN where a NaN was logged */
    size_t n;
} mt_store_series;

/* The series of metric `name` of a run in step order (n = 0 when it has none). */
mt_status mt_store_metric_series(mt_store *s, int64_t run_id, const char *name, mt_store_series *out,
                                 mt_error *err);
void mt_store_series_free(mt_store_series *sr);

/* One logged value; a list of them in (step, name) order. */
typedef struct mt_store_point {
    int64_t step;
    char *name;
    double value; /* NaN where a NaN was logged */
} mt_store_point;

typedef struct mt_store_point_list {
    mt_store_point *items; /* [n] */
    size_t n;
} mt_store_point_list;

/* Every metric of a run logged at a step >= from_step: what a live view asks for on each poll
 * (the workbench's stream), at the cost of what is new rather than of the whole run. */
mt_status mt_store_metrics_since(mt_store *s, int64_t run_id, int64_t from_step, mt_store_point_list *out,
                                 mt_error *err);
void mt_store_point_list_free(mt_store_point_list *l);

/* One metric of a run, summarised: its name and where it ended and peaked. min/max ignore NaN
 * (and are NaN when every value is). */
typedef struct mt_store_metric_summary {
    char *name;
    int64_t count;
    int64_t last_step;
    double last;
    double min, max;
    int64_t min_step, max_step;
} mt_store_metric_summary;

typedef struct mt_store_metric_list {
    mt_store_metric_summary *items; /* [n], by name */
    size_t n;
} mt_store_metric_list;

/* The metric names of a run with their summaries. */
mt_status mt_store_metric_names(mt_store *s, int64_t run_id, mt_store_metric_list *out, mt_error *err);
void mt_store_metric_list_free(mt_store_metric_list *l);

/* ========================================= events ========================================= */

/* kind: "checkpoint", "resume", "nan_skip", "error", ...; step < 0 means "no step" (NULL);
 * detail_json: a JSON value or NULL. Invalid JSON is MT_ERR_INVALID. */
mt_status mt_store_log_event(mt_store *s, int64_t run_id, int64_t step, const char *kind, const char *detail_json,
                             mt_error *err);

typedef struct mt_store_event {
    int64_t id;
    int64_t step; /* -1 when none */
    double time;
    char *kind;
    char *detail_json; /* NULL when none */
} mt_store_event;

typedef struct mt_store_event_list {
    mt_store_event *items; /* [n], in the order they were logged */
    size_t n;
} mt_store_event_list;

mt_status mt_store_events(mt_store *s, int64_t run_id, mt_store_event_list *out, mt_error *err);
void mt_store_event_list_free(mt_store_event_list *l);

/* ======================================== datasets ======================================== */

/* A data file as a run used it. A dataset is identified by (path, sha256, format): adding it
 * again returns the same id and refreshes the counts (when given, i.e. >= 0). With run_id > 0
 * the dataset is also linked to that run under `split` ("train", "eval", ...; NULL = "train"). */
typedef struct mt_store_dataset_info {
    const char *path;
    const char *sha256;
    const char *format; /* "text", "prompt_completion", "preference", "messages", "folder", ... */
    int64_t n_docs;     /* -1 when unknown */
    int64_t n_tokens;   /* -1 when unknown */
    int64_t run_id;     /* 0: do not link */
    const char *split;
} mt_store_dataset_info;

mt_status mt_store_dataset_add(mt_store *s, const mt_store_dataset_info *info, int64_t *dataset_id, mt_error *err);

typedef struct mt_store_dataset {
    int64_t id;
    char *path, *sha256, *format;
    int64_t n_docs, n_tokens; /* -1 when unknown */
    char *split;              /* the link's split when listed for a run, else NULL */
    double added;
} mt_store_dataset;

typedef struct mt_store_dataset_list {
    mt_store_dataset *items; /* [n] */
    size_t n;
} mt_store_dataset_list;

/* Datasets linked to a run (run_id > 0; one entry per split), or every dataset (run_id == 0). */
mt_status mt_store_datasets(mt_store *s, int64_t run_id, mt_store_dataset_list *out, mt_error *err);
void mt_store_dataset_list_free(mt_store_dataset_list *l);

/* ======================================== adapters ======================================== */

typedef struct mt_store_adapter_info {
    const char *path;      /* export folder */
    int64_t run_id;        /* 0: not made by a recorded run */
    const char *base_hash; /* the base the adapter was trained on */
    int rank;
    double alpha;
    const char *targets_json;    /* e.g. ["q_proj","v_proj"]; NULL = null */
    const char *thresholds_json; /* e.g. {"dap_threshold":0.31}; NULL = null */
    const char *eval_json;       /* e.g. {"eval_loss":1.82}; NULL = null */
} mt_store_adapter_info;

/* Records an adapter; the same run exporting to the same path again (a resume that repeats a
 * killed export) updates that row and returns its id. */
mt_status mt_store_adapter_add(mt_store *s, const mt_store_adapter_info *info, int64_t *adapter_id, mt_error *err);

typedef struct mt_store_adapter {
    int64_t id;
    int64_t run_id; /* 0 when none */
    char *path, *base_hash;
    int rank;
    double alpha;
    char *targets_json, *thresholds_json, *eval_json; /* NULL when null */
    double created;
} mt_store_adapter;

typedef struct mt_store_adapter_list {
    mt_store_adapter *items; /* [n], oldest first */
    size_t n;
} mt_store_adapter_list;

/* Adapters of a run (run_id > 0) or all adapters (run_id == 0). */
mt_status mt_store_adapters(mt_store *s, int64_t run_id, mt_store_adapter_list *out, mt_error *err);
void mt_store_adapter_list_free(mt_store_adapter_list *l);

/* ==================================== preference pairs ==================================== */

typedef struct mt_store_pair {
    int64_t id; /* filled when read back; ignored on insert */
    const char *prompt;
    const char *chosen;
    const char *rejected;
    const char *source;     /* where it came from, e.g. "gcide:(Med.)"; may be NULL */
    const char *label_json; /* label metadata as JSON; may be NULL */
} mt_store_pair;

/* Inserts a batch into dataset `dataset_id` in one transaction. A pair whose (prompt, chosen,
 * rejected) is already in that dataset — or earlier in the same batch — is skipped and counted
 * in *n_duplicates. Both counts may be NULL. */
mt_status mt_store_pairs_add(mt_store *s, int64_t dataset_id, const mt_store_pair *pairs, size_t n,
                             size_t *n_added, size_t *n_duplicates, mt_error *err);
mt_status mt_store_pairs_count(mt_store *s, int64_t dataset_id, int64_t *count, mt_error *err);

typedef struct mt_store_pair_list {
    mt_store_pair *items; /* [n], by id; the strings are owned by the list */
    size_t n;
} mt_store_pair_list;

/* Pairs of a dataset in insertion order, from `offset`, at most `limit` (limit < 0: all). */
mt_status mt_store_pairs_get(mt_store *s, int64_t dataset_id, int64_t offset, int64_t limit,
                             mt_store_pair_list *out, mt_error *err);
void mt_store_pair_list_free(mt_store_pair_list *l);
/* The dedup key: lowercase hex SHA-256 over the three texts, each prefixed by its length as a
 * little-endian u64 (so ("ab","c") and ("a","bc") differ). */
void mt_store_pair_hash(const char *prompt, const char *chosen, const char *rejected, char out[65]);

/* ------------------------- pair datasets: import, list, stats (pairs.c) ------------------------- */

/* The JSONL forms TRL reads. Conversational pairs keep prompt, chosen and rejected as JSON
 * message lists ([{"role","content"},...], unformatted); implicit ones had no "prompt" and had
 * it extracted as TRL's extract_prompt does (the longest common prefix, backed up over a space;
 * for messages, the shared leading messages). */
typedef enum mt_pair_format {
    MT_PAIR_STANDARD = 0,            /* {"prompt","chosen","rejected"} strings */
    MT_PAIR_CONVERSATIONAL,          /* the same with message lists */
    MT_PAIR_IMPLICIT,                /* {"chosen","rejected"} strings sharing a prefix */
    MT_PAIR_IMPLICIT_CONVERSATIONAL, /* message lists sharing leading messages */
    MT_PAIR_FORMAT_COUNT
} mt_pair_format;
const char *mt_pair_format_name(mt_pair_format f); /* "standard", "conversational", ... */

/* One line, parsed. Optional keys: "score" (number), "label_source" or "source" (string),
 * "annotator" (string); any other key goes into label_json as an object. */
typedef struct mt_pair_parsed {
    mt_pair_format format;
    char *prompt, *chosen, *rejected; /* text, or JSON message lists */
    double score;                     /* NaN when none */
    char *source, *annotator;         /* NULL when none */
    char *label_json;                 /* the other keys as an object; NULL when none */
    char hash[65];                    /* mt_store_pair_hash of the three texts */
} mt_pair_parsed;

/* Parses one JSONL line (len bytes, no terminator needed). False with a reason for a person
 * ("missing \"rejected\"", "not valid JSON", ...) when the line is not a usable pair; out is
 * then empty. Refused: not an object, chosen/rejected missing or of mixed types, a malformed
 * message, an empty completion, identical chosen and rejected, no shared prefix for an
 * implicit prompt, a score that is not a finite number, invalid UTF-8. Trainers reading pairs straight from a file use it too. */
bool mt_pairs_parse_line(const char *line, size_t len, mt_pair_parsed *out, char *reason, size_t cap);
void mt_pair_parsed_free(mt_pair_parsed *p);
/* The split of a pair, from its hash alone: eval when the first 64 bits of the hash, as a
 * fraction of 2^64, are below eval_fraction. The same pair lands in the same split whatever
 * the file, the order or the dataset. */
bool mt_pairs_is_eval(const char *hash, double eval_fraction);

typedef struct mt_pairs_import_opts {
    const char *dataset;  /* the pair dataset's name; created on first import */
    bool strict;          /* any refused line fails the whole import (nothing is written) */
    double eval_fraction; /* [0, 1): share of pairs, by hash, in the eval split */
} mt_pairs_import_opts;

typedef struct mt_pairs_refusal {
    char *file;
    int64_t line; /* 1-based */
    char *reason;
} mt_pairs_refusal;

typedef struct mt_pairs_import_report {
    int64_t dataset_id, import_id;
    size_t n_lines;       /* non-blank lines read */
    size_t n_added;       /* new pairs */
    size_t n_duplicates;  /* same content already in the dataset, or earlier in the file */
    size_t n_train, n_eval;                   /* of the added */
    size_t n_by_format[MT_PAIR_FORMAT_COUNT]; /* of the added */
    mt_pairs_refusal *refused;                /* [n_refused], every refused line */
    size_t n_refused;
} mt_pairs_import_report;

/* Imports a JSONL file into a named pair dataset in ONE transaction: every line is parsed first,
 * then the pairs, the import record (file, its SHA-256, time, counts, refused lines with their
 * reasons) and the dataset's digest are written together or not at all. A refused line is
 * listed in the report and skipped; with strict, any refused line is MT_ERR_FORMAT
 * ("FILE:LINE: reason") and nothing is written. A file with no usable pair is MT_ERR_FORMAT.
 * The report (free with mt_pairs_import_report_free) keeps the refusals even on failure. */
mt_status mt_store_pairs_import(mt_store *s, const char *path, const mt_pairs_import_opts *o,
                                mt_pairs_import_report *rep, mt_error *err);
void mt_pairs_import_report_free(mt_pairs_import_report *r);

/* The id of a named pair dataset; MT_ERR_NOT_FOUND naming it when there is none. */
mt_status mt_store_pairs_dataset_id(mt_store *s, const char *name, int64_t *id, mt_error *err);
/* Every named pair dataset, by name; in each entry `path` holds the name, sha256 the digest of
 * its pair hashes (the content's identity) and n_docs its pair count. */
mt_status mt_store_pair_datasets(mt_store *s, mt_store_dataset_list *out, mt_error *err);

/* A stored pair with its provenance. Strings owned by the list. */
typedef struct mt_pair_record {
    int64_t id;
    mt_pair_format format;
    char *prompt, *chosen, *rejected;
    char hash[65];
    bool eval;                     /* split: eval or train */
    double score;                  /* NaN when none */
    char *source, *annotator, *label_json;
    char *file;                    /* the file it was imported from (NULL for pairs added otherwise) */
    int64_t line;                  /* its line there; -1 when unknown */
    double created;                /* Unix seconds; NaN when unknown */
} mt_pair_record;

typedef struct mt_pair_record_list {
    mt_pair_record *items; /* [n], by id (import order) */
    size_t n;
} mt_pair_record_list;

typedef struct mt_pairs_query {
    const char *dataset; /* name */
    const char *split;   /* "train", "eval" or NULL for both */
    int64_t offset;
    int64_t limit; /* < 0: all */
} mt_pairs_query;

mt_status mt_store_pairs_list(mt_store *s, const mt_pairs_query *q, mt_pair_record_list *out, mt_error *err);
void mt_pair_record_list_free(mt_pair_record_list *l);
/* One pair as a TRL JSONL line (no newline; malloc'ed): "prompt", "chosen", "rejected" as
 * strings or message lists, then "score", "label_source", "annotator" and the label keys.
 * Implicit pairs come out with their extracted prompt. */
char *mt_pair_record_json(const mt_pair_record *r);

typedef struct mt_pairs_stats {
    int64_t dataset_id;
    int64_t n_pairs, n_train, n_eval;
    int64_t n_by_format[MT_PAIR_FORMAT_COUNT];
    int64_t n_imports, n_lines, n_duplicates, n_refused; /* summed over the imports */
    mt_pairs_refusal *refused;                            /* [n_refused_listed], every import's */
    size_t n_refused_listed;
} mt_pairs_stats;

mt_status mt_store_pairs_stats(mt_store *s, const char *dataset, mt_pairs_stats *out, mt_error *err);
void mt_pairs_stats_free(mt_pairs_stats *st);

/* ------------------------- a person's corrections to a pair (pairs_edit.c) ------------------------- */

typedef enum mt_pair_edit {
    MT_PAIR_SWAP = 0, /* chosen and rejected change places: the label was the wrong way round */
    MT_PAIR_DROP,     /* the pair leaves the dataset */
} mt_pair_edit;

/* One edit of pair `pair_id` of the named dataset, in ONE transaction with the dataset's digest
 * and count. A swap recomputes the pair's content hash, trades the label's "chosen_*" and
 * "rejected_*" keys (a served pair's ids, models, versions), sets "relabelled": "swapped" and,
 * when annotator is not NULL, the annotator; its split is kept. MT_ERR_NOT_FOUND
 * for no such dataset or no such pair in it; MT_ERR_INVALID when the swapped pair is already in
 * the dataset (nothing written). */
mt_status mt_store_pair_edit(mt_store *s, const char *dataset, int64_t pair_id, mt_pair_edit op,
                             const char *annotator, mt_error *err);

/* ------------------------ cached reference log-probs per pair (pairs.c) ------------------------ */

/* What a reference log-prob depends on. A DPO run asks for its batch's pairs by content hash
 * and computes only the misses, so an edited or grown dataset recomputes only new pairs. */
typedef struct mt_ref_key {
    const char *base_hash;      /* content hash of the base weights */
    const char *adapter_hash;   /* the frozen reference adapter's; NULL or "" for the base alone */
    const char *tokenizer_hash; /* e.g. SHA-256 of tokenizer.json (+ chat template) */
    const char *truncation;     /* the settings as one string: mt_ref_truncation_key */
} mt_ref_key;

typedef struct mt_ref_logps {
    double chosen, rejected;               /* summed completion-token log-probs */
    int64_t chosen_tokens, rejected_tokens; /* completion lengths after truncation */
} mt_ref_logps;

/* The canonical truncation string ("max_length=…;max_prompt_length=…;
 * max_completion_length=…;mode=…"; values <= 0 mean none); returns its length. */
size_t mt_ref_truncation_key(char *out, size_t cap, int64_t max_length, int64_t max_prompt_length,
                             int64_t max_completion_length, const char *truncation_mode);
/* Stores n entries (pair_hashes[i] → v[i]) in one transaction, replacing earlier ones.
 * Non-finite log-probs are MT_ERR_NUMERIC (nothing written). */
mt_status mt_store_ref_logps_put(mt_store *s, const mt_ref_key *k, const char *const *pair_hashes,
                                 const mt_ref_logps *v, size_t n, mt_error *err);
/* Looks up n pairs: found[i] says whether out[i] was filled; *n_found (may be NULL) counts them. */
mt_status mt_store_ref_logps_get(mt_store *s, const mt_ref_key *k, const char *const *pair_hashes, size_t n,
                                 mt_ref_logps *out, bool *found, size_t *n_found, mt_error *err);

/* ===================================== comparisons ===================================== */

/* One leaf of two runs' config JSON that differs. Values are JSON text; NULL when the key is
 * absent from that run's config. */
typedef struct mt_store_config_diff {
    char *key; /* JSON path, e.g. "$.lora.rank" */
    char *a, *b;
} mt_store_config_diff;

typedef struct mt_store_diff_list {
    mt_store_config_diff *items; /* [n], by key */
    size_t n;
} mt_store_diff_list;

mt_status mt_store_config_diff_runs(mt_store *s, int64_t run_a, int64_t run_b, mt_store_diff_list *out,
                                    mt_error *err);
void mt_store_diff_list_free(mt_store_diff_list *l);

/* ==================================== served requests ==================================== */

/* One request the engine served (`moetune serve --store`). Strings may be NULL. */
typedef struct mt_store_served {
    double time;              /* Unix seconds when it arrived */
    const char *endpoint;     /* "/v1/completions", "/v1/chat/completions" */
    const char *model;        /* the "model" it asked for */
    const char *adapter;      /* adapter name, NULL for the base */
    int64_t adapter_version;  /* 0 for the base */
    int status;               /* HTTP status */
    int64_t prompt_tokens, completion_tokens;
    int n_choices;
    const char *finish_reason; /* of the first choice */
    double ttft;              /* seconds to the first token; NaN when none */
    double latency;           /* seconds to the last */
    const char *prompt;       /* the first prompt as text */
    const char *completions_json; /* JSON array of the choices' texts */
    /* what feedback needs to find a completion again (schema 4; NULL/0 in older rows) */
    const char *response_id;  /* the response's "id", e.g. "chatcmpl-…" */
    const char *prompts_json; /* chat: the messages [{"role","content"},...]; completions: every
                               * prompt's text as a JSON array of strings */
    int n_per_prompt;         /* the request's n: choice i answers prompt i / n */
} mt_store_served;

/* Inserts rows in ONE transaction (the engine writes in batches off its decode thread). */
mt_status mt_store_served_add(mt_store *s, const mt_store_served *rows, size_t n, mt_error *err);
mt_status mt_store_served_count(mt_store *s, int64_t *count, mt_error *err);

/* ============================ feedback on served completions ============================ */
/* (feedback.c) A client that was served two completions for one prompt says which it prefers,
 * or rates one; the store turns that into a preference pair of a named pair dataset, with
 * provenance: source "served" and the response ids, models and adapter versions in label_json. */

/* One choice of a served response, found by the response id and the choice index. */
typedef struct mt_served_choice {
    int64_t row_id;            /* the `served` row */
    char *response_id;
    int index;                 /* OpenAI choice index */
    char *endpoint, *model;
    char *adapter;             /* NULL for the base */
    int64_t adapter_version;   /* 0 for the base */
    int status;                /* HTTP status it was served with */
    mt_pair_format format;     /* conversational (chat) or standard (completions) */
    char *prompt;              /* chat: the messages as a JSON list; completions: the prompt text */
    char *completion;          /* chat: [{"role":"assistant","content":TEXT}]; completions: TEXT */
    char *text;                /* TEXT, the completion as served */
    char prompt_hash[65];      /* SHA-256 of the format and the prompt: "the same prompt" */
} mt_served_choice;

/* MT_ERR_NOT_FOUND (the message names the id) when no served request has that id, or it was
 * recorded before schema 4; MT_ERR_INVALID when it has no choice `index`. Free with
 * mt_served_choice_free (also after a failure). */
mt_status mt_store_served_choice(mt_store *s, const char *response_id, int index, mt_served_choice *out,
                                 mt_error *err);
void mt_served_choice_free(mt_served_choice *c);

typedef struct mt_feedback_opts {
    const char *dataset;   /* the pair dataset's name; created on first use */
    const char *annotator; /* may be NULL */
    bool eval;             /* the pairs' split: eval instead of train */
} mt_feedback_opts;

typedef struct mt_feedback_result {
    int64_t dataset_id;
    size_t n_added;        /* new pairs */
    size_t n_duplicates;   /* pairs whose content was already in the dataset */
    int64_t pair_id;       /* the (first) pair added or already there; 0 when none */
} mt_feedback_result;

/* chosen ≻ rejected as one pair, in ONE transaction: the dataset created if needed, the pair
 * (content-hash dedup: the same content again counts as a duplicate), the dataset's digest.
 * MT_ERR_INVALID (nothing written) when the two are one choice, answer different prompts, or
 * have the same text. */
mt_status mt_store_feedback_prefer(mt_store *s, const mt_served_choice *chosen, const mt_served_choice *rejected,
                                   const mt_feedback_opts *o, mt_feedback_result *res, mt_error *err);

/* A rating (any finite number, higher is better) of one choice, kept in `served_ratings` (one
 * per choice and dataset: rating it again replaces the value). In the same transaction every
 * other rated choice of the same prompt in that dataset with a different rating and a
 * different text becomes a pair, the higher-rated one chosen; equal ratings make no pair.
 * MT_ERR_NUMERIC for a non-finite rating. */
mt_status mt_store_feedback_rate(mt_store *s, const mt_served_choice *c, double rating, const mt_feedback_opts *o,
                                 mt_feedback_result *res, mt_error *err);

/* ========================================= plots ========================================= */

typedef enum mt_plot_style {
    MT_PLOT_LINE = 0, /* a solid line (train curves) */
    MT_PLOT_POINTS,   /* markers joined by a thin dashed line (eval curves, sparse) */
} mt_plot_style;

typedef struct mt_plot_series {
    const char *label; /* legend text */
    const double *x;   /* [n], increasing */
    const double *y;   /* [n]; a non-finite value breaks the line there */
    size_t n;
    mt_plot_style style;
    bool smooth; /* with opts.ema > 0: the EMA on top, the raw curve faint behind it */
} mt_plot_series;

typedef struct mt_plot_opts {
    const char *title;
    const char *x_label; /* with units, e.g. "step (optimizer updates)" */
    const char *y_label; /* with units, e.g. "loss (nats/token)" */
    int width, height;   /* pixels; 0 means 960 x 560 */
    bool log_y;          /* every plotted y must then be > 0 */
    double ema;          /* smoothing weight in [0, 1); 0 = off */
} mt_plot_opts;

/* Renders the series as a standalone SVG document (malloc'ed, NUL-terminated): title, axes
 * with 1-2-5 ticks and a grid, one colour per series, a legend. MT_ERR_INVALID when there is
 * nothing finite to draw, or a non-positive y on a log axis. */
mt_status mt_plot_svg(const mt_plot_opts *opts, const mt_plot_series *series, size_t n_series, char **svg,
                      mt_error *err);

/* "Nice" tick values covering [lo, hi]: multiples of 1, 2 or 5 x 10^k, about `target` of them.
 * Writes at most cap values and returns how many it wrote. */
size_t mt_plot_ticks(double lo, double hi, int target, double *ticks, size_t cap);

#endif
