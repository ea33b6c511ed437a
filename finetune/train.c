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
#include "peft/lora.h"
#include "run-impl.h"
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

/* ---- one optimizer step ---- */

/* The next n rows of the data order, moving to the next epoch (a new permutation) at the end. */
static void next_rows(mt_run *run, int64_t *idx, int n) {
    for (int i = 0; i < n; i++) {
        if (run->st.cursor >= run->train_rows.n_rows) {
            run->st.epoch++;
            run->st.cursor = 0;
            mt_rows_epoch_order(run->train_rows.n_rows, (uint64_t)run->r->train.seed, run->st.epoch,
                                run->r->data.shuffle, run->order);
        }
        idx[i] = run->order[run->st.cursor++];
    }
}

typedef struct step_out {
    double loss, aux, grad_norm, lr;
    int64_t n_tokens;
    bool skipped;
} step_out;

static mt_status train_step(mt_run *run, step_out *so, mt_error *err) {
    const mt_recipe *r = run->r;
    int B = r->train.micro_batch, ga = r->train.grad_accum, T = run->T;
    int64_t *idx = run->step_idx; /* [ga·B] */
    next_rows(run, idx, ga * B);
    /* The step's loss is the mean over every target token of all its micro-batches (as
     * transformers does with num_items_in_batch), so accumulation does not reweight rows. */
    int64_t n_step = 0;
    for (int i = 0; i < ga * B; i++) n_step += run->train_rows.n_targets[idx[i]];
    if (run->lora) mt_lora_zero_grad(run->lora);
    mt_optim_zero_grad(&run->optim);
    double loss_sum = 0, aux_sum = 0;
    for (int g = 0; g < ga; g++) {
        mt_batch_buf_fill(&run->buf, &run->train_rows, idx + (size_t)g * B, B);
        size_t n = (size_t)B * T;
        float w = n_step > 0 ? 1.0f / (float)n_step : 0.0f;
        for (size_t t = 0; t < n; t++) run->buf.dloss[t] = run->buf.targets[t] != MT_IGNORE_INDEX ? w : 0.0f;
        mt_batch batch = mt_batch_buf_view(&run->buf);
        mt_forward_opts fo = {
            .train = true,
            .seed = mt_hash_u64((uint64_t)r->train.seed, (uint64_t)(run->st.step * ga + g)),
            .router_noise = (float)r->train.router_noise,
            .aux_coef = (float)(run->aux_coef / ga),
            .adapter = mt_lora_adapter(run->lora),
        };
        mt_forward_result fr;
        MT_TRY(mt_model_forward(run->model, run->ws, &batch, &fo, &fr, err));
        MT_TRY(mt_model_backward(run->model, run->ws, run->buf.dloss, err));
        loss_sum += fr.loss_sum;
        aux_sum += fr.aux_loss;
    }
    so->n_tokens = n_step;
    so->loss = n_step ? loss_sum / (double)n_step : NAN;
    so->aux = aux_sum / ga;
    so->grad_norm = mt_optim_grad_norm(&run->optim);
    so->lr = mt_schedule_lr(r, run->st.step, run->total_steps, run->warmup);
    so->skipped = !isfinite(so->grad_norm) || !isfinite(so->loss);
    if (so->skipped) return MT_OK;
    if (r->train.clip_norm > 0 && so->grad_norm > r->train.clip_norm)
        mt_optim_scale_grad(&run->optim, (float)(r->train.clip_norm / (so->grad_norm + 1e-6)));
    mt_optim_step(&run->optim, r, so->lr);
    return MT_OK;
}

/* ---- evaluation and checkpoints ---- */

static mt_status evaluate(mt_run *run, int64_t step, mt_train_result *res, mt_error *err) {
    if (!run->eval_rows.n_rows) return MT_OK;
    double loss;
    int64_t n;
    MT_TRY(mt_eval_rows(run->model, run->eval_ws, &run->eval_buf, &run->eval_rows, mt_lora_adapter(run->lora), &loss,
                        &n, err));
    res->eval_loss = loss;
    res->eval_ppl = exp(loss);
    res->eval_tokens = n;
    mt_metric m[] = {{"eval_loss", loss}, {"eval_ppl", exp(loss)}};
    MT_TRY(metrics(run, step, m, 2, err));
    if (run->opts->on_progress) {
        mt_train_progress p = {.step = step, .total_steps = run->total_steps, .eval = true,
                               .eval_loss = loss, .eval_ppl = exp(loss), .log_line = true};
        run->opts->on_progress(run->opts->user, &p);
    }
    return MT_OK;
}

static mt_status checkpoint(mt_run *run, mt_error *err) {
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
    int64_t tokens_per_step = (int64_t)r->train.micro_batch * r->train.grad_accum * run->T;
    double tps = 0;
    while (run->st.step < run->total_steps) {
        if (o->max_steps > 0 && done_here >= o->max_steps) break;
        step_out so;
        MT_TRY(train_step(run, &so, err));
        run->st.step++;
        done_here++;
        run->st.tokens_seen += tokens_per_step;
        window_tokens += tokens_per_step;
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
        mt_metric m[] = {{"loss", so.loss},           {"lr", so.lr},          {"grad_norm", so.grad_norm},
                         {"aux_loss", so.aux},        {"tokens_per_sec", tps}, {"tokens", (double)so.n_tokens}};
        if (log_line) MT_TRY(metrics(run, run->st.step, m, sizeof m / sizeof m[0], err));
        if (o->on_progress) {
            double rate = (now - t0) / (double)done_here;
            mt_train_progress p = {.step = run->st.step,
                                   .total_steps = run->total_steps,
                                   .loss = so.loss,
                                   .lr = so.lr,
                                   .grad_norm = so.grad_norm,
                                   .aux_loss = so.aux,
                                   .tokens_per_sec = tps,
                                   .eta_seconds = rate * (double)(run->total_steps - run->st.step),
                                   .skipped = so.skipped,
                                   .log_line = log_line};
            o->on_progress(o->user, &p);
        }
        bool last = run->st.step == run->total_steps;
        if (every(r->train.eval_every, run->st.step) || last) MT_TRY(evaluate(run, run->st.step, res, err));
        if ((every(r->train.save_every, run->st.step) && !last) ||
            (o->stop_flag && *o->stop_flag && !last))
            MT_TRY(checkpoint(run, err));
        if (o->stop_flag && *o->stop_flag && !last) {
            res->interrupted = true;
            break;
        }
    }
    double secs = mt_now_seconds() - t0;
    res->tokens_per_sec = secs > 0 ? (double)(done_here * tokens_per_step) / secs : 0;
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
        if (st == MT_OK && !res->interrupted && res->steps == res->total_steps && !opts->no_export)
            st = mt_run_export(&run, res, err);
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
