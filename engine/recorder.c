/* recorder.c — `--store`: served requests go to the SQLite store from a writer thread of their
 * own, a batch per transaction, so that neither the decode thread nor a generation request ever
 * waits on SQLite (a commit's fsync costs milliseconds). Feedback borrows the writer's handle
 * once the rows queued before it are committed (tickets: queued vs. settled). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine-impl.h"

#define REC_BATCH 64
#define REC_QUEUE_MAX 65536 /* past this, rows are dropped (and counted) rather than hoarded */

struct mt_recorder {
    mt_engine *e;
    mt_store *store;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t settled_cv; /* signalled when a batch is settled */
    mt_store_served *q; /* [cap] rows with malloc'ed strings */
    size_t n, cap;
    bool stopping;
    uint64_t written, dropped;
    uint64_t queued;  /* rows ever accepted into q */
    uint64_t settled; /* of those, rows committed or failed: every row < settled is in the store or never will be */
    /* Held by whoever uses `store`: the writer for a batch, a feedback call for its lookups and
     * writes. An SQLite connection may move between threads but not be used by two at once. */
    pthread_mutex_t store_mu;
};

static char *dup_or_null(const char *s) { return s ? mt_xstrdup(s) : NULL; }

static void row_free(mt_store_served *r) {
    free((char *)r->endpoint);
    free((char *)r->model);
    free((char *)r->adapter);
    free((char *)r->finish_reason);
    free((char *)r->prompt);
    free((char *)r->completions_json);
    free((char *)r->response_id);
    free((char *)r->prompts_json);
}

void mt_recorder_push(mt_recorder *r, const mt_store_served *row) {
    pthread_mutex_lock(&r->mu);
    if (r->n >= REC_QUEUE_MAX) {
        r->dropped++;
        pthread_mutex_unlock(&r->mu);
        return;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->q = mt_xrealloc(r->q, r->cap * sizeof *r->q);
    }
    r->queued++;
    mt_store_served *d = &r->q[r->n++];
    *d = *row;
    d->endpoint = dup_or_null(row->endpoint);
    d->model = dup_or_null(row->model);
    d->adapter = dup_or_null(row->adapter);
    d->finish_reason = dup_or_null(row->finish_reason);
    d->prompt = dup_or_null(row->prompt);
    d->completions_json = dup_or_null(row->completions_json);
    d->response_id = dup_or_null(row->response_id);
    d->prompts_json = dup_or_null(row->prompts_json);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void *rec_main(void *arg) {
    mt_recorder *r = arg;
    mt_store_served batch[REC_BATCH];
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (r->n == 0 && !r->stopping) {
            /* gather for a moment: one transaction for many requests */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&r->cv, &r->mu, &ts);
            continue;
        }
        if (r->n == 0 && r->stopping) break;
        size_t k = r->n < REC_BATCH ? r->n : REC_BATCH;
        memcpy(batch, r->q, k * sizeof *batch);
        memmove(r->q, r->q + k, (r->n - k) * sizeof *r->q);
        r->n -= k;
        pthread_mutex_unlock(&r->mu);
        mt_error err = {0};
        pthread_mutex_lock(&r->store_mu);
        mt_status st = mt_store_served_add(r->store, batch, k, &err);
        pthread_mutex_unlock(&r->store_mu);
        if (st != MT_OK) mt_eng_log(r->e, "store: %zu served requests not recorded: %s", k, err.msg);
        for (size_t i = 0; i < k; i++) row_free(&batch[i]);
        pthread_mutex_lock(&r->mu);
        if (st == MT_OK) r->written += k;
        r->settled += k;
        pthread_cond_broadcast(&r->settled_cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

mt_status mt_recorder_start(mt_recorder **out, mt_engine *e, const char *path, mt_error *err) {
    *out = NULL;
    mt_recorder *r = mt_xcalloc(1, sizeof *r);
    r->e = e;
    mt_status st = mt_store_open(&r->store, path, true, err);
    if (st) {
        free(r);
        return st;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    pthread_cond_init(&r->settled_cv, NULL);
    pthread_mutex_init(&r->store_mu, NULL);
    if (pthread_create(&r->thread, NULL, rec_main, r) != 0) {
        mt_store_close(r->store);
        pthread_mutex_destroy(&r->mu);
        pthread_cond_destroy(&r->cv);
        pthread_cond_destroy(&r->settled_cv);
        pthread_mutex_destroy(&r->store_mu);
        free(r);
        return mt_error_set(err, MT_ERR_NOMEM, "cannot start the store writer thread");
    }
    *out = r;
    return MT_OK;
}

void mt_recorder_stop(mt_recorder *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->stopping = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    for (size_t i = 0; i < r->n; i++) row_free(&r->q[i]);
    free(r->q);
    mt_store_close(r->store);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    pthread_cond_destroy(&r->settled_cv);
    pthread_mutex_destroy(&r->store_mu);
    free(r);
}

uint64_t mt_recorder_written(mt_recorder *r) {
    if (!r) return 0;
    pthread_mutex_lock(&r->mu);
    uint64_t w = r->written;
    pthread_mutex_unlock(&r->mu);
    return w;
}

mt_status mt_recorder_with_store(mt_recorder *r, mt_status (*fn)(mt_store *s, void *ctx, mt_error *err), void *ctx,
                                 mt_error *err) {
    /* Rows the writer has taken out of q but not yet committed are neither in q nor in the
     * store: looking in both would still miss them, so wait for the writer to settle every row
     * queued so far. It wakes on its own for a non-empty queue, so this costs one commit. */
    pthread_mutex_lock(&r->mu);
    uint64_t ticket = r->queued;
    while (r->settled < ticket) pthread_cond_wait(&r->settled_cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_lock(&r->store_mu);
    mt_status st = fn(r->store, ctx, err);
    pthread_mutex_unlock(&r->store_mu);
    return st;
}
