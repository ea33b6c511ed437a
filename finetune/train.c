/* train.c — the training loop: steps of accumulated micro-batches, AdamW with clipping and the
 * NaN guard, evaluation, checkpoints and resume, and the run's record in the store. */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "checkpoint-impl.h"
#include "dist/dist.h"
#include "peft/lora.h"
#include "objective-impl.h"
#include "store/store.h"


double mt_peak_rss_mb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return NAN;
    return (double)ru.ru_maxrss / 1024.0; /* kilobytes on Linux */
}

/* ---- the run's record: failures to write it are errors (the record is half the product) ---- */

static void event(mt_run *run, int64_t step, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void event(mt_run *run, int64_t step, const char *kind, const char *fmt, ...) {
    if (!run->store) return;
    char detail[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    mt_error e = {0};
    if (mt_store_log_event(run->store, run->run_id, step, kind, detail, &e) != MT_OK)
        mt_run_note(run->opts, "warning: could not record event %s: %s", kind, e.msg);
}

static mt_status metrics(mt_run *run, int64_t step, const mt_metric *m, size_t n, mt_error *err) {
    if (!run->store) return MT_OK;
    return mt_store_log_metrics(run->store, run->run_id, step, m, n, err);
}

/* Each MoE layer's routing in the step's last training forward (this rank's micro-batch):
 * router/entropy/L<l> (mean entropy of the routing distribution, nats) and
 * router/load_max/L<l> (the busiest expert's tokens over the mean: 1 is perfectly balanced),
 * the curves that show experts collapsing or balancing while a run trains. */
static mt_status router_metrics(mt_run *run, int64_t step, mt_error *err) {
    if (!run->store || !run->ws) return MT_OK;
    int E = mt_model_config(run->model)->n_experts;
    mt_router_stats rs;
    for (int i = 0; E > 0 && mt_workspace_router_stats(run->ws, i, &rs); i++) {
        int64_t tot = 0;
        int32_t mx = 0;
        for (int e = 0; e < E; e++) {
            tot += rs.tokens_per_expert[e];
            if (rs.tokens_per_expert[e] > mx) mx = rs.tokens_per_expert[e];
        }
        if (tot <= 0) continue;
        char ne[48], nl[48];
        snprintf(ne, sizeof ne, "router/entropy/L%d", rs.layer);
        snprintf(nl, sizeof nl, "router/load_max/L%d", rs.layer);
        mt_metric m[2] = {{ne, rs.entropy}, {nl, (double)mx * E / (double)tot}};
        MT_TRY(metrics(run, step, m, 2, err));
    }
    return MT_OK;
}

/* ---- one optimizer step ---- */

/* The next n examples of the data order, moving to the next epoch (a new permutation) at the end. */
static void next_examples(mt_run *run, int64_t *idx, int n) {
    for (int i = 0; i < n; i++) {
        if (run->st.cursor >= run->n_examples) {
            run->st.epoch++;
            run->st.cursor = 0;
            mt_rows_epoch_order(run->n_examples, (uint64_t)run->r->train.seed, run->st.epoch, run->r->data.shuffle,
                                run->order);
        }
        idx[i] = run->order[run->st.cursor++];
    }
}

void mt_obj_metric(mt_obj_metrics *ms, const char *name, double value) {
    /* a metric an objective cannot compute for this batch is left out rather than stored as NaN */
    if (!isfinite(value) || ms->n >= MT_OBJ_MAX_METRICS) return;
    ms->m[ms->n++] = (mt_metric){name, value};
}

void mt_run_zero_grad(mt_run *run) {
    if (run->lora) mt_lora_zero_grad(run->lora);
    mt_optim_zero_grad(&run->optim);
}

mt_forward_opts mt_run_forward_opts(const mt_run *run, int g) {
    const mt_recipe *r = run->r;
    int ga = r->train.grad_accum;
    return (mt_forward_opts){
        .train = true,
        .seed = mt_hash_u64((uint64_t)r->train.seed, (uint64_t)(run->st.step * ga + g)),
        .router_noise = (float)r->train.router_noise,
        .aux_coef = (float)(run->aux_coef / ga),
        .adapter = mt_lora_adapter(run->lora),
    };
}

mt_status mt_run_train_workspace(mt_run *run, int B, int T, int max_rank, mt_error *err) {
    static const mt_checkpointing modes[] = {
        [MT_RECIPE_CHECKPOINTING_NONE] = MT_CHECKPOINTING_NONE,
        [MT_RECIPE_CHECKPOINTING_LAYERS] = MT_CHECKPOINTING_LAYERS,
        [MT_RECIPE_CHECKPOINTING_SELECTIVE] = MT_CHECKPOINTING_SELECTIVE,
    };
    return mt_workspace_init_checkpointed(&run->ws, run->model, B, T, max_rank, modes[run->r->train.checkpointing],
                                          err);
}

/* ---- data parallelism: what the ranks add up before an update (docs/scale-out.md) ---- */

/* How a step metric combines over ranks. Objectives report a step's means over its
 * micro-batches as each rank's share (the sum over its micro-batches of value / grad_accum),
 * and shares add up; extremes (after the last '/': TRL's min_*, max_*, and *_min, *_max as in
 * clip_ratio/low_min) take the extreme. */
static mt_dist_op metric_op(const char *name) {
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    size_t n = strlen(base);
    if (!strncmp(base, "min", 3) || (n > 4 && !strcmp(base + n - 4, "_min"))) return MT_DIST_OP_MIN;
    if (!strncmp(base, "max", 3) || (n > 4 && !strcmp(base + n - 4, "_max"))) return MT_DIST_OP_MAX;
    return MT_DIST_OP_SUM;
}

/* The names of a metric list, hashed: every rank must hold the same list for the slots to line
 * up (an objective leaves a non-finite metric out, which one rank may do and another not). */
static uint32_t metric_names_hash(const mt_obj_metrics *ms) {
    uint32_t h = 2166136261u ^ (uint32_t)ms->n;
    for (int i = 0; i < ms->n; i++) {
        for (const char *c = ms->m[i].name; *c; c++) h = (h ^ (uint8_t)*c) * 16777619u;
        h = (h ^ 0xffu) * 16777619u;
    }
    return h;
}

/* Sums the gradients over ranks (bucketed), then the step's scalars in two small all-reduces
 * (sums; extremes): loss, aux, tokens, the stop request, the metrics. Each rank's gradients and
 * scalars are its share of the global step (the objective's denominators are the whole step's),
 * so the sums are exactly what one rank doing every micro-batch would hold. */
static mt_status dist_reduce(mt_run *run, double *loss, mt_step_out *so, mt_error *err) {
    enum { N_FIXED = 5 };
    MT_TRY(mt_optim_allreduce_grad(&run->optim, run->dist, run->dist_bucket, run->dist_bucket_cap, err));
    const mt_train_opts *o = run->opts;
    mt_obj_metrics *ms = &so->metrics;
    uint32_t sig = metric_names_hash(ms);
    double sum[N_FIXED + MT_OBJ_MAX_METRICS], ext[MT_OBJ_MAX_METRICS];
    sum[0] = *loss;
    sum[1] = so->aux;
    sum[2] = (double)so->n_tokens;
    sum[3] = (double)sig;
    sum[4] = o->stop_flag && *o->stop_flag;
    for (int i = 0; i < MT_OBJ_MAX_METRICS; i++) {
        mt_dist_op op = i < ms->n ? metric_op(ms->m[i].name) : MT_DIST_OP_SUM;
        sum[N_FIXED + i] = i < ms->n && op == MT_DIST_OP_SUM ? ms->m[i].value : 0.0;
        /* one MAX reduce serves both extremes: a minimum travels negated */
        ext[i] = i >= ms->n || op == MT_DIST_OP_SUM ? -INFINITY
                 : op == MT_DIST_OP_MAX             ? ms->m[i].value
                                                    : -ms->m[i].value;
    }
    MT_TRY(mt_dist_allreduce_f64(run->dist, sum, N_FIXED + MT_OBJ_MAX_METRICS, MT_DIST_OP_SUM, err));
    MT_TRY(mt_dist_allreduce_f64(run->dist, ext, MT_OBJ_MAX_METRICS, MT_DIST_OP_MAX, err));
    *loss = so->loss = sum[0]; /* the step's loss comes back in so->loss */
    so->aux = sum[1];
    so->n_tokens = llround(sum[2]);
    run->dist_stop = sum[4] > 0;
    /* every rank sees the same sum; it is n_ranks times its own hash only when all lists match */
    if (sum[3] != (double)sig * run->n_ranks) {
        mt_run_note(o, "warning: step %lld: the ranks' metric lists differ (a metric was non-finite on some); "
                       "the step's metrics are not logged",
                    (long long)run->st.step + 1);
        ms->n = 0;
        return MT_OK;
    }
    for (int i = 0; i < ms->n; i++) {
        mt_dist_op op = metric_op(ms->m[i].name);
        ms->m[i].value = op == MT_DIST_OP_SUM ? sum[N_FIXED + i] : op == MT_DIST_OP_MAX ? ext[i] : -ext[i];
    }
    return MT_OK;
}

/* Every rank's trainables must be bit-identical after each update (same summed gradients, same
 * AdamW): checked where it matters, before a checkpoint that only rank 0 writes. */
static mt_status dist_check_identical(mt_run *run, mt_error *err) {
    if (run->n_ranks <= 1) return MT_OK;
    uint32_t h = 2166136261u;
    for (int i = 0; i < run->optim.n; i++) {
        const uint32_t *w = (const uint32_t *)(const void *)run->optim.t[i].data;
        for (int64_t k = 0; k < run->optim.t[i].numel; k++) h = (h ^ w[k]) * 16777619u;
    }
    double v[2] = {(double)h, (double)h};
    MT_TRY(mt_dist_allreduce_f64(run->dist, &v[0], 1, MT_DIST_OP_MIN, err));
    MT_TRY(mt_dist_allreduce_f64(run->dist, &v[1], 1, MT_DIST_OP_MAX, err));
    if (v[0] != v[1])
        return mt_error_set(err, MT_ERR_NUMERIC,
                            "step %lld: the ranks' trainable weights differ (rank %d holds hash %08x); the data-parallel "
                            "update diverged",
                            (long long)run->st.step, run->rank, h);
    return MT_OK;
}

mt_status mt_run_dist_sum(mt_run *run, double *v, size_t n, mt_error *err) {
    return mt_dist_allreduce_f64(run->dist, v, n, MT_DIST_OP_SUM, err);
}

/* Ctrl-C (or a launcher's SIGTERM) reaches the ranks at different moments: with several, the
 * request travels in the step's all-reduce and every rank stops after the same step. */
static bool stop_now(const mt_run *run) {
    if (run->n_ranks > 1) return run->dist_stop;
    return run->opts->stop_flag && *run->opts->stop_flag;
}

void mt_run_update(mt_run *run, double loss, mt_step_out *so) {
    const mt_recipe *r = run->r;
    if (run->n_ranks > 1) {
        if (run->dist_status == MT_OK) run->dist_status = dist_reduce(run, &loss, so, &run->dist_err);
        if (run->dist_status != MT_OK) {
            so->skipped = true; /* train_step reports the failure once the objective returns */
            return;
        }
    }
    so->grad_norm = mt_optim_grad_norm(&run->optim);
    so->lr = mt_schedule_lr(r, run->st.step, run->total_steps, run->warmup);
    so->skipped = !isfinite(so->grad_norm) || !isfinite(loss);
    if (so->skipped) return;
    if (r->train.clip_norm > 0 && so->grad_norm > r->train.clip_norm)
        mt_optim_scale_grad(&run->optim, (float)(r->train.clip_norm / (so->grad_norm + 1e-6)));
    mt_optim_step(&run->optim, r, so->lr);
}

static mt_status train_step(mt_run *run, mt_step_out *so, mt_error *err) {
    int n = run->r->train.micro_batch * run->r->train.grad_accum;
    next_examples(run, run->step_idx, n);
    memset(so, 0, sizeof *so);
    MT_TRY(run->obj->step(run, run->step_idx, n, so, err));
    if (run->dist_status != MT_OK) {
        *err = run->dist_err;
        return run->dist_status;
    }
    return MT_OK;
}

/* ---- evaluation and checkpoints ---- */

static mt_status evaluate(mt_run *run, int64_t step, mt_train_result *res, mt_error *err) {
    /* held-out figures are rank 0's to compute and record; the others wait in the next step */
    if (!run->obj->eval || run->rank != 0) return MT_OK;
    mt_eval_out eo = {.loss = NAN};
    MT_TRY(run->obj->eval(run, &eo, err));
    if (!isfinite(eo.loss) && eo.metrics.n == 0) return MT_OK; /* nothing held out */
    res->eval_loss = eo.loss;
    res->eval_ppl = eo.has_ppl ? exp(eo.loss) : NAN;
    res->eval_tokens = eo.n_tokens;
    mt_metric m[2 + MT_OBJ_MAX_METRICS];
    char names[MT_OBJ_MAX_METRICS][80];
    size_t n = 0;
    if (isfinite(eo.loss)) m[n++] = (mt_metric){"eval_loss", eo.loss};
    if (eo.has_ppl && isfinite(eo.loss)) m[n++] = (mt_metric){"eval_ppl", exp(eo.loss)};
    for (int i = 0; i < eo.metrics.n; i++) {
        snprintf(names[i], sizeof names[i], "eval_%s", eo.metrics.m[i].name);
        m[n++] = (mt_metric){names[i], eo.metrics.m[i].value};
    }
    MT_TRY(metrics(run, step, m, n, err));
    if (run->opts->on_progress) {
        const char *mn[MT_OBJ_MAX_METRICS];
        double mv[MT_OBJ_MAX_METRICS];
        for (int i = 0; i < eo.metrics.n; i++) {
            mn[i] = eo.metrics.m[i].name;
            mv[i] = eo.metrics.m[i].value;
        }
        mt_train_progress p = {.step = step, .total_steps = run->total_steps, .eval = true,
                               .eval_loss = eo.loss, .eval_ppl = res->eval_ppl, .log_line = true,
                               .n_metrics = eo.metrics.n, .metric_names = mn, .metric_values = mv};
        run->opts->on_progress(run->opts->user, &p);
    }
    return MT_OK;
}

static mt_status checkpoint(mt_run *run, mt_error *err) {
    MT_TRY(dist_check_identical(run, err));
    if (run->opts->no_checkpoints) return MT_OK;
    char path[4096];
    run->st.optim_step = run->optim.step;
    MT_TRY(mt_ckpt_save(run->r->output.dir, &run->optim, &run->st, run->r->train.save_total_limit, path, sizeof path,
                     err));
    char *q = mt_json_quote(path);
    event(run, run->st.step, "checkpoint", "{\"path\":%s}", q);
    free(q);
    mt_run_note(run->opts, "checkpoint %s", path);
    return MT_OK;
}

static bool every(int interval, int64_t step) { return interval > 0 && step % interval == 0; }

/* ---- the loop ---- */

static mt_status loop(mt_run *run, mt_train_result *res, mt_error *err) {
    const mt_recipe *r = run->r;
    const mt_train_opts *o = run->opts;
    double t0 = mt_now_seconds(), window_t = t0;
    int64_t window_tokens = 0, done_here = 0;
    int64_t tokens_here = 0;
    double tps = 0;
    /* a resumed run has its figures before training already */
    if (r->train.eval_on_start && run->st.step == 0) MT_TRY(evaluate(run, 0, res, err));
    while (run->st.step < run->total_steps) {
        if (o->max_steps > 0 && done_here >= o->max_steps) break;
        mt_step_out so;
        MT_TRY(train_step(run, &so, err));
        run->st.step++;
        done_here++;
        run->st.tokens_seen += so.n_tokens;
        window_tokens += so.n_tokens;
        tokens_here += so.n_tokens;
        double now = mt_now_seconds();
        /* tokens/s over a window of at least a few seconds: steady, but still current */
        if (now - window_t > 0) tps = (double)window_tokens / (now - window_t);
        if (now - window_t > 5) {
            window_t = now;
            window_tokens = 0;
        }
        res->steps = run->st.step;
        if (so.skipped) {
            run->st.nan_streak++;
            event(run, run->st.step, "nan_skip", "{\"loss\":%s,\"grad_norm\":%s,\"streak\":%lld}",
                  isfinite(so.loss) ? "\"finite\"" : "\"non-finite\"",
                  isfinite(so.grad_norm) ? "\"finite\"" : "\"non-finite\"", (long long)run->st.nan_streak);
            mt_run_note(o, "step %lld: non-finite loss or gradients, update skipped (%lld in a row)",
                 (long long)run->st.step, (long long)run->st.nan_streak);
            if (run->st.nan_streak > r->train.max_nan_skips)
                return mt_error_set(err, MT_ERR_NUMERIC,
                                    "step %lld: %lld non-finite steps in a row (train.max_nan_skips = %d); lower "
                                    "train.lr or check the data",
                                    (long long)run->st.step, (long long)run->st.nan_streak, r->train.max_nan_skips);
        } else {
            run->st.nan_streak = 0;
            res->last_loss = so.loss;
        }
        bool log_line = run->st.step == 1 || every(r->train.log_every, run->st.step) ||
                        run->st.step == run->total_steps;
        mt_metric m[6 + MT_OBJ_MAX_METRICS] = {{"loss", so.loss},    {"lr", so.lr},
                                               {"grad_norm", so.grad_norm}, {"aux_loss", so.aux},
                                               {"tokens_per_sec", tps}, {"num_tokens", (double)run->st.tokens_seen}};
        size_t nm = 6;
        for (int i = 0; i < so.metrics.n; i++) m[nm++] = so.metrics.m[i];
        if (log_line) MT_TRY(metrics(run, run->st.step, m, nm, err));
        if (log_line) MT_TRY(router_metrics(run, run->st.step, err));
        if (o->on_progress) {
            const char *mn[MT_OBJ_MAX_METRICS];
            double mv[MT_OBJ_MAX_METRICS];
            for (int i = 0; i < so.metrics.n; i++) {
                mn[i] = so.metrics.m[i].name;
                mv[i] = so.metrics.m[i].value;
            }
            double rate = (now - t0) / (double)done_here;
            mt_train_progress p = {.step = run->st.step,
                                   .total_steps = run->total_steps,
                                   .loss = so.loss,
                                   .lr = so.lr,
                                   .grad_norm = so.grad_norm,
                                   .aux_loss = so.aux,
                                   .tokens_per_sec = tps,
                                   .tokens = so.n_tokens,
                                   .eta_seconds = rate * (double)(run->total_steps - run->st.step),
                                   .skipped = so.skipped,
                                   .log_line = log_line,
                                   .n_metrics = so.metrics.n,
                                   .metric_names = mn,
                                   .metric_values = mv};
            o->on_progress(o->user, &p);
        }
        bool last = run->st.step == run->total_steps;
        if (every(r->train.eval_every, run->st.step) || last) MT_TRY(evaluate(run, run->st.step, res, err));
        bool stop = stop_now(run);
        if ((every(r->train.save_every, run->st.step) && !last) || (stop && !last))
            MT_TRY(checkpoint(run, err));
        if (stop && !last) {
            res->interrupted = true;
            break;
        }
    }
    double secs = mt_now_seconds() - t0;
    res->tokens_per_sec = secs > 0 ? (double)tokens_here / secs : 0;
    return MT_OK;
}

mt_status mt_train(const mt_recipe *r, const mt_train_opts *opts, mt_train_result *res, mt_error *err) {
    static const mt_train_opts no_opts = {0};
    if (!opts) opts = &no_opts;
    memset(res, 0, sizeof *res);
    res->eval_loss = res->eval_ppl = res->mean_entropy = NAN;
    double t0 = mt_now_seconds();
    mt_run run;
    mt_status st = mt_run_open(&run, r, opts, res, err);
    if (st == MT_OK) {
        /* a run killed after its last step (checkpoint, export or the final record) resumes at
         * the end: it still evaluates, exports and completes as the uninterrupted run did */
        res->steps = run.st.step;
        if (run.st.step == run.total_steps) st = evaluate(&run, run.st.step, res, err);
        if (st == MT_OK) st = loop(&run, res, err);
        /* interrupted runs checkpointed in the loop; a run cut short by max_steps does it here */
        if (st == MT_OK && !res->interrupted) st = checkpoint(&run, err);
        if (st == MT_OK && !res->interrupted && res->steps == res->total_steps && !run.opts->no_export) {
            st = mt_run_calibrate_experts(&run, err);
            if (st == MT_OK) st = mt_run_export(&run, res, err);
        }
    }
    res->seconds = mt_now_seconds() - t0;
    res->peak_rss_mb = mt_peak_rss_mb();
    if (run.store && run.run_id) {
        mt_error e = {0};
        mt_run_status final = st == MT_OK ? (res->interrupted ? MT_RUN_INTERRUPTED : MT_RUN_COMPLETED) : MT_RUN_FAILED;
        if (st == MT_OK && res->steps < res->total_steps) final = MT_RUN_INTERRUPTED;
        if (final == MT_RUN_FAILED) event(&run, run.st.step, "error", "{\"message\":%s}", "\"see status_message\"");
        if (mt_store_run_set_status(run.store, run.run_id, final, st == MT_OK ? NULL : err->msg, &e) != MT_OK &&
            st == MT_OK)
            st = mt_error_set(err, e.code, "%s", e.msg);
    }
    mt_run_close(&run);
    if (st == MT_OK && res->interrupted)
        return mt_error_set(err, MT_ERR_INTERRUPTED, "stopped at step %lld of %lld; a checkpoint was saved: "
                            "run again with --resume to continue",
                            (long long)res->steps, (long long)res->total_steps);
    return st;
}
