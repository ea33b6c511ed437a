/* cmd_runs.c — `moetune runs`: list, show, compare and plot the runs recorded in the SQLite
 * store. Reading only: it never creates a store, and it can watch a run that is still writing.
 * Formatting lives here; every query is a store/ call. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "store/store.h"

#define CMD "runs"
#define MAX_METRICS 16
#define MAX_RUNS 16

static void usage(FILE *f) {
    fprintf(f,
            "usage: moetune runs [--store PATH] <command>\n"
            "\n"
            "commands:\n"
            "  list                      every run: id, name, method, status, steps, last loss, start, duration\n"
            "  show ID                   one run: status, recipe, datasets, adapters, last metrics, events\n"
            "  compare A B               two runs side by side: settings, config differences, final/best metrics\n"
            "  plot ID [ID...] --metric NAME [--metric NAME...] --out FILE.svg\n"
            "                            curves of the metrics; for a train metric NAME the run's eval_NAME\n"
            "                            is drawn too when it exists\n"
            "\n"
            "options:\n"
            "  --store PATH              the store (default: $MOETUNE_STORE, else ./moetune.db)\n"
            "  --smooth A                plot: exponential moving average of train curves, A in [0, 1)\n"
            "                            (e.g. 0.9), drawn over the faint raw curve\n"
            "  --log-y                   plot: logarithmic y axis\n"
            "  --title TEXT              plot: title (default: the metrics and runs)\n"
            "  --width PX, --height PX   plot: size (default 960 x 560)\n");
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "moetune " CMD ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(moetune runs --help for the commands)\n");
    return 2;
}

/* ---- formatting ---- */

static void fmt_time(char *out, size_t cap, double t) {
    if (!(t > 0)) {
        snprintf(out, cap, "-");
        return;
    }
    time_t s = (time_t)t;
    struct tm tm;
    localtime_r(&s, &tm);
    strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
}

static void fmt_duration(char *out, size_t cap, double sec) {
    if (!(sec >= 0)) sec = 0;
    long s = lround(sec);
    if (s < 60)
        snprintf(out, cap, "%lds", s);
    else if (s < 3600)
        snprintf(out, cap, "%ldm%02lds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, cap, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else
        snprintf(out, cap, "%ldd%02ldh", s / 86400, (s % 86400) / 3600);
}

static void fmt_value(char *out, size_t cap, double v) {
    if (isnan(v))
        snprintf(out, cap, "nan");
    else
        snprintf(out, cap, "%.6g", v);
}

static const char *or_dash(const char *s) { return s && *s ? s : "-"; }

static const char *status_text(const mt_store_run *r) {
    return r->stale ? "interrupted*" : mt_run_status_name(r->status);
}

/* ---- how metrics read: written once as data ---- */

/* Which direction is "best" for a metric, matched on a substring of its name. Metrics not
 * listed (lr, grad_norm, ...) have no best. */
static const struct {
    const char *pattern;
    int better; /* -1: lower, +1: higher */
} metric_direction[] = {
    {"loss", -1}, {"ppl", -1}, {"perplexity", -1}, {"nll", -1}, {"accurac", +1}, {"margin", +1},
};

/* Units for a y axis, by metric name with any "eval_"/"train_" prefix removed. */
static const struct {
    const char *name;
    const char *label;
} metric_units[] = {
    {"loss", "loss (nats/token)"},
    {"ppl", "perplexity (per token)"},
    {"lr", "learning rate"},
    {"grad_norm", "gradient norm (global L2)"},
    {"tokens_per_s", "throughput (tokens/s)"},
    {"step_time", "step time (s)"},
    {"aux_loss", "router aux loss (unitless)"},
};

static int direction_of(const char *name) {
    for (size_t i = 0; i < sizeof metric_direction / sizeof metric_direction[0]; i++)
        if (strstr(name, metric_direction[i].pattern)) return metric_direction[i].better;
    return 0;
}

static const char *base_name(const char *name) {
    if (!strncmp(name, "eval_", 5)) return name + 5;
    if (!strncmp(name, "train_", 6)) return name + 6;
    return name;
}

static const char *unit_label(const char *name) {
    const char *b = base_name(name);
    for (size_t i = 0; i < sizeof metric_units / sizeof metric_units[0]; i++)
        if (!strcmp(b, metric_units[i].name)) return metric_units[i].label;
    return NULL;
}

/* ---- argument parsing ---- */

typedef struct args {
    const char *store;
    const char *sub;
    const char *pos[MAX_RUNS + 1];
    int n_pos;
    const char *metrics[MAX_METRICS];
    int n_metrics;
    const char *out;
    const char *title;
    double smooth;
    bool log_y;
    int width, height;
} args;

static bool parse_double(const char *s, double *out) {
    char *end;
    *out = strtod(s, &end);
    return *s && !*end;
}

static bool parse_id(const char *s, int64_t *out) {
    char *end;
    long long v = strtoll(s, &end, 10);
    *out = v;
    return *s && !*end && v > 0;
}

/* Returns -1 when parsed, else the exit code (0 after --help). */
static int parse_args(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        bool has_value = i + 1 < argc;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(o, "--log-y")) {
            a->log_y = true;
        } else if (!strncmp(o, "--", 2)) {
            static const char *const with_value[] = {"--store", "--out", "--title", "--metric",
                                                     "--smooth", "--width", "--height"};
            bool known = false;
            for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++) known |= !strcmp(o, with_value[k]);
            if (!known) return usage_error("unknown option '%s'", o);
            if (!has_value) return usage_error("%s needs a value", o);
            const char *v = argv[++i];
            double d;
            if (!strcmp(o, "--store"))
                a->store = v;
            else if (!strcmp(o, "--out"))
                a->out = v;
            else if (!strcmp(o, "--title"))
                a->title = v;
            else if (!strcmp(o, "--metric")) {
                if (a->n_metrics == MAX_METRICS) return usage_error("at most 16 metrics per plot (%s)", v);
                a->metrics[a->n_metrics++] = v;
            } else if (!strcmp(o, "--smooth")) {
                if (!parse_double(v, &a->smooth) || !(a->smooth >= 0 && a->smooth < 1))
                    return usage_error("--smooth must be a number in [0, 1), not '%s'", v);
            } else if (!strcmp(o, "--width") || !strcmp(o, "--height")) {
                if (!parse_double(v, &d) || d < 240 || d > 10000 || d != floor(d))
                    return usage_error("plot sizes are whole pixels from 240 to 10000, not '%s'", v);
                if (!strcmp(o, "--width"))
                    a->width = (int)d;
                else
                    a->height = (int)d;
            }
        } else if (!a->sub) {
            a->sub = o;
        } else {
            if (a->n_pos == MAX_RUNS + 1) return usage_error("too many arguments (%s)", o);
            a->pos[a->n_pos++] = o;
        }
    }
    if (!a->store) a->store = getenv("MOETUNE_STORE");
    if (!a->store || !*a->store) a->store = "moetune.db";
    return -1;
}

static int open_store(const args *a, mt_store **s) {
    mt_error err = {0};
    if (mt_store_open(s, a->store, false, &err) == MT_OK) return -1;
    if (err.code == MT_ERR_NOT_FOUND)
        fprintf(stderr, "moetune " CMD ": %s (a training run creates it; pass --store PATH or set MOETUNE_STORE)\n",
                err.msg);
    else
        mt_cli_fail(CMD, &err);
    return mt_cli_exit_code(err.code);
}

/* ---- list ---- */

static int cmd_list(mt_store *s) {
    mt_store_run_list l;
    mt_error err = {0};
    if (mt_store_run_list_all(s, &l, &err) != MT_OK) return mt_cli_fail(CMD, &err);
    if (l.n == 0) {
        printf("no runs in %s\n", mt_store_path(s));
        mt_store_run_list_free(&l);
        return 0;
    }
    int wname = 4;
    bool any_stale = false;
    for (size_t i = 0; i < l.n; i++) {
        int n = (int)strlen(l.items[i].name);
        if (n > wname) wname = n;
        any_stale |= l.items[i].stale;
    }
    if (wname > 40) wname = 40;
    printf("%5s  %-*s  %-7s  %-12s  %8s  %10s  %-19s  %s\n", "ID", wname, "NAME", "METHOD", "STATUS", "STEPS",
           "LAST LOSS", "STARTED", "DURATION");
    for (size_t i = 0; i < l.n; i++) {
        const mt_store_run *r = &l.items[i];
        char steps[32], loss[32], started[32], dur[32];
        if (r->last_step >= 0)
            snprintf(steps, sizeof steps, "%lld", (long long)r->last_step);
        else
            snprintf(steps, sizeof steps, "-");
        if (r->has_loss)
            fmt_value(loss, sizeof loss, r->last_loss);
        else
            snprintf(loss, sizeof loss, "-");
        fmt_time(started, sizeof started, r->started);
        fmt_duration(dur, sizeof dur, r->duration);
        printf("%5lld  %-*.*s  %-7s  %-12s  %8s  %10s  %-19s  %s\n", (long long)r->id, wname, wname, r->name, r->method,
               status_text(r), steps, loss, started, dur);
    }
    if (any_stale) printf("\n* its process is gone without recording an end (killed or crashed)\n");
    mt_store_run_list_free(&l);
    return 0;
}

/* ---- show ---- */

static void print_indented(const char *text, const char *prefix) {
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        int n = nl ? (int)(nl - p) : (int)strlen(p);
        printf("%s%.*s\n", prefix, n, p);
        p += n + (nl ? 1 : 0);
    }
}

static int cmd_show(mt_store *s, const args *a) {
    int64_t id;
    if (a->n_pos != 1) return usage_error("%s needs exactly one run id", "show");
    if (!parse_id(a->pos[0], &id)) return usage_error("'%s' is not a run id", a->pos[0]);
    mt_error err = {0};
    mt_store_run r;
    if (mt_store_run_get(s, id, &r, &err) != MT_OK) return mt_cli_fail(CMD, &err);
    char t0[32], t1[32], tw[32], dur[32], steps[32] = "-";
    fmt_time(t0, sizeof t0, r.started);
    fmt_time(t1, sizeof t1, r.ended);
    fmt_time(tw, sizeof tw, r.updated);
    fmt_duration(dur, sizeof dur, r.duration);
    if (r.last_step >= 0) snprintf(steps, sizeof steps, "%lld", (long long)r.last_step);
    printf("run %lld  %s\n", (long long)r.id, r.name);
    if (r.stale)
        printf("  status     interrupted (process %lld on %s is gone; no end was recorded; last write %s)\n",
               (long long)r.pid, r.host, tw);
    else
        printf("  status     %s%s%s\n", mt_run_status_name(r.status), r.status_message ? ": " : "",
               r.status_message ? r.status_message : "");
    printf("  method     %s\n", r.method);
    printf("  started    %s   duration %s\n", t0, dur);
    if (r.ended > 0) printf("  ended      %s\n", t1);
    printf("  base       %s   hash %s\n", or_dash(r.base_path), or_dash(r.base_hash));
    printf("  recipe     sha256 %s\n", or_dash(r.recipe_sha256));
    printf("  seed       %llu\n", (unsigned long long)r.seed);
    printf("  moetune    %s   git %s\n", or_dash(r.version), or_dash(r.git_revision));
    printf("  process    %lld on %s\n", (long long)r.pid, or_dash(r.host));
    printf("  last step  %s   last write %s\n", steps, tw);

    mt_store_dataset_list dl = {0};
    mt_store_adapter_list al = {0};
    mt_store_metric_list ml = {0};
    mt_store_event_list el = {0};
    mt_status st = mt_store_datasets(s, id, &dl, &err);
    if (st == MT_OK) st = mt_store_adapters(s, id, &al, &err);
    if (st == MT_OK) st = mt_store_metric_names(s, id, &ml, &err);
    if (st == MT_OK) st = mt_store_events(s, id, &el, &err);
    if (st == MT_OK) {
        printf("\ndatasets (%zu)\n", dl.n);
        for (size_t i = 0; i < dl.n; i++) {
            const mt_store_dataset *d = &dl.items[i];
            printf("  %-6s %s  [%s]", or_dash(d->split), d->path, d->format);
            if (d->n_docs >= 0) printf("  %lld docs", (long long)d->n_docs);
            if (d->n_tokens >= 0) printf("  %lld tokens", (long long)d->n_tokens);
            printf("  sha256 %.16s\n", d->sha256);
        }
        printf("\nadapters (%zu)\n", al.n);
        for (size_t i = 0; i < al.n; i++) {
            const mt_store_adapter *ad = &al.items[i];
            printf("  #%lld %s  rank %d  alpha %g  targets %s\n", (long long)ad->id, ad->path, ad->rank, ad->alpha,
                   or_dash(ad->targets_json));
            if (ad->thresholds_json) printf("      thresholds %s\n", ad->thresholds_json);
            if (ad->eval_json) printf("      eval %s\n", ad->eval_json);
        }
        printf("\nmetrics (%zu)\n", ml.n);
        if (ml.n) printf("  %-20s %7s %9s %12s %12s %9s %12s %9s\n", "NAME", "COUNT", "LAST STEP", "LAST", "MIN", "@STEP",
                         "MAX", "@STEP");
        for (size_t i = 0; i < ml.n; i++) {
            const mt_store_metric_summary *m = &ml.items[i];
            char last[32], mn[32], mx[32];
            fmt_value(last, sizeof last, m->last);
            fmt_value(mn, sizeof mn, m->min);
            fmt_value(mx, sizeof mx, m->max);
            printf("  %-20s %7lld %9lld %12s %12s %9lld %12s %9lld\n", m->name, (long long)m->count,
                   (long long)m->last_step, last, mn, (long long)m->min_step, mx, (long long)m->max_step);
        }
        printf("\nevents (%zu)", el.n);
        /* a tally by kind, in order of first appearance, then the most recent few */
        for (size_t i = 0; i < el.n; i++) {
            bool seen = false;
            for (size_t j = 0; j < i && !seen; j++) seen = !strcmp(el.items[j].kind, el.items[i].kind);
            if (seen) continue;
            size_t n = 0;
            for (size_t j = i; j < el.n; j++) n += !strcmp(el.items[j].kind, el.items[i].kind);
            printf("%s %s x%zu", i ? "," : ":", el.items[i].kind, n);
        }
        printf("\n");
        size_t from = el.n > 10 ? el.n - 10 : 0;
        for (size_t i = from; i < el.n; i++) {
            const mt_store_event *e = &el.items[i];
            char when[32], step[32];
            fmt_time(when, sizeof when, e->time);
            if (e->step >= 0)
                snprintf(step, sizeof step, "step %lld", (long long)e->step);
            else
                snprintf(step, sizeof step, "-");
            printf("  %s  %-12s %-14s %s\n", when, step, e->kind, e->detail_json ? e->detail_json : "");
        }
        if (r.recipe_text) {
            printf("\nrecipe\n");
            print_indented(r.recipe_text, "  | ");
        }
        printf("\nconfig\n  %s\n", r.config_json);
    }
    mt_store_dataset_list_free(&dl);
    mt_store_adapter_list_free(&al);
    mt_store_metric_list_free(&ml);
    mt_store_event_list_free(&el);
    mt_store_run_free(&r);
    return st == MT_OK ? 0 : mt_cli_fail(CMD, &err);
}

/* ---- compare ---- */

static const mt_store_metric_summary *find_metric(const mt_store_metric_list *l, const char *name) {
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->items[i].name, name)) return &l->items[i];
    return NULL;
}

static void fmt_best(char *out, size_t cap, const mt_store_metric_summary *m) {
    int dir = m ? direction_of(m->name) : 0;
    if (!m || dir == 0 || isnan(dir < 0 ? m->min : m->max)) {
        snprintf(out, cap, "-");
        return;
    }
    snprintf(out, cap, "%.6g @%lld", dir < 0 ? m->min : m->max, (long long)(dir < 0 ? m->min_step : m->max_step));
}

static int cmd_compare(mt_store *s, const args *a) {
    int64_t ida, idb;
    if (a->n_pos != 2) return usage_error("%s needs two run ids", "compare");
    if (!parse_id(a->pos[0], &ida)) return usage_error("'%s' is not a run id", a->pos[0]);
    if (!parse_id(a->pos[1], &idb)) return usage_error("'%s' is not a run id", a->pos[1]);
    mt_error err = {0};
    mt_store_run ra = {0}, rb = {0};
    mt_store_diff_list dl = {0};
    mt_store_metric_list ma = {0}, mb = {0};
    mt_status st = mt_store_run_get(s, ida, &ra, &err);
    if (st == MT_OK) st = mt_store_run_get(s, idb, &rb, &err);
    if (st == MT_OK) st = mt_store_config_diff_runs(s, ida, idb, &dl, &err);
    if (st == MT_OK) st = mt_store_metric_names(s, ida, &ma, &err);
    if (st == MT_OK) st = mt_store_metric_names(s, idb, &mb, &err);
    if (st == MT_OK) {
        char ha[32], hb[32], sa[32], sb[32], da[32], db[32], seeda[32], seedb[32];
        snprintf(ha, sizeof ha, "run %lld", (long long)ida);
        snprintf(hb, sizeof hb, "run %lld", (long long)idb);
        snprintf(sa, sizeof sa, "%lld", (long long)ra.last_step);
        snprintf(sb, sizeof sb, "%lld", (long long)rb.last_step);
        snprintf(seeda, sizeof seeda, "%llu", (unsigned long long)ra.seed);
        snprintf(seedb, sizeof seedb, "%llu", (unsigned long long)rb.seed);
        fmt_duration(da, sizeof da, ra.duration);
        fmt_duration(db, sizeof db, rb.duration);
        const char *rows[][3] = {
            {"", ha, hb},
            {"name", ra.name, rb.name},
            {"method", ra.method, rb.method},
            {"status", status_text(&ra), status_text(&rb)},
            {"base", or_dash(ra.base_path), or_dash(rb.base_path)},
            {"base hash", or_dash(ra.base_hash), or_dash(rb.base_hash)},
            {"recipe sha256", or_dash(ra.recipe_sha256), or_dash(rb.recipe_sha256)},
            {"seed", seeda, seedb},
            {"moetune", or_dash(ra.version), or_dash(rb.version)},
            {"git", or_dash(ra.git_revision), or_dash(rb.git_revision)},
            {"steps", sa, sb},
            {"duration", da, db},
        };
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
            bool differs = i > 0 && strcmp(rows[i][1], rows[i][2]) != 0;
            printf("%s %-14s %-34s %s\n", differs ? "*" : " ", rows[i][0], rows[i][1], rows[i][2]);
        }
        printf("\nconfig differences (%zu)%s\n", dl.n, dl.n ? "" : ": none");
        for (size_t i = 0; i < dl.n; i++)
            printf("  %-30s %-24s %s\n", dl.items[i].key, dl.items[i].a ? dl.items[i].a : "(absent)",
                   dl.items[i].b ? dl.items[i].b : "(absent)");

        printf("\nmetrics\n  %-20s %12s %12s %18s %18s\n", "NAME", "FINAL A", "FINAL B", "BEST A", "BEST B");
        /* every name of A in order, then the names only B has */
        for (int pass = 0; pass < 2; pass++) {
            const mt_store_metric_list *own = pass ? &mb : &ma, *other = pass ? &ma : &mb;
            for (size_t i = 0; i < own->n; i++) {
                if (pass && find_metric(other, own->items[i].name)) continue;
                const char *name = own->items[i].name;
                const mt_store_metric_summary *x = find_metric(&ma, name), *y = find_metric(&mb, name);
                char fa[32] = "-", fb[32] = "-", ba[48], bb[48];
                if (x) fmt_value(fa, sizeof fa, x->last);
                if (y) fmt_value(fb, sizeof fb, y->last);
                fmt_best(ba, sizeof ba, x);
                fmt_best(bb, sizeof bb, y);
                printf("  %-20s %12s %12s %18s %18s\n", name, fa, fb, ba, bb);
            }
        }
    }
    mt_store_run_free(&ra);
    mt_store_run_free(&rb);
    mt_store_diff_list_free(&dl);
    mt_store_metric_list_free(&ma);
    mt_store_metric_list_free(&mb);
    return st == MT_OK ? 0 : mt_cli_fail(CMD, &err);
}

/* ---- plot ---- */

typedef struct plot_data {
    mt_plot_series series[MAX_RUNS * MAX_METRICS * 2];
    char *labels[MAX_RUNS * MAX_METRICS * 2];
    double *xs[MAX_RUNS * MAX_METRICS * 2];
    double *ys[MAX_RUNS * MAX_METRICS * 2];
    size_t n;
} plot_data;

static void plot_data_free(plot_data *p) {
    for (size_t i = 0; i < p->n; i++) {
        free(p->labels[i]);
        free(p->xs[i]);
        free(p->ys[i]);
    }
}

/* Adds the series of one metric of one run; false when the run has no such metric. */
static bool add_series(plot_data *p, const mt_store_run *r, const char *metric, bool many_runs,
                       const mt_store_series *sr) {
    if (sr->n == 0) return false;
    size_t k = p->n++;
    char label[256];
    if (many_runs)
        snprintf(label, sizeof label, "#%lld %s: %s", (long long)r->id, r->name, metric);
    else
        snprintf(label, sizeof label, "%s", metric);
    p->labels[k] = mt_xstrdup(label);
    p->xs[k] = mt_xmalloc(sr->n * sizeof(double));
    p->ys[k] = mt_xmalloc(sr->n * sizeof(double));
    for (size_t i = 0; i < sr->n; i++) {
        p->xs[k][i] = (double)sr->steps[i];
        p->ys[k][i] = sr->values[i];
    }
    bool eval = !strncmp(metric, "eval_", 5);
    p->series[k] = (mt_plot_series){.label = p->labels[k], .x = p->xs[k], .y = p->ys[k], .n = sr->n,
                                    .style = eval ? MT_PLOT_POINTS : MT_PLOT_LINE, .smooth = !eval};
    return true;
}

/* The y label: each distinct base metric with its unit, e.g. "loss (nats/token)". */
static void y_label(char *out, size_t cap, const char *const *names, int n) {
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        const char *unit = unit_label(names[i]);
        const char *part = unit ? unit : base_name(names[i]);
        if (strstr(out, part)) continue;
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s%s", len ? ", " : "", part);
    }
}

static int cmd_plot(mt_store *s, const args *a) {
    if (a->n_pos < 1) return usage_error("%s needs at least one run id", "plot");
    if (a->n_pos > MAX_RUNS) return usage_error("at most 16 runs per plot (%s)", a->pos[MAX_RUNS]);
    if (a->n_metrics == 0) return usage_error("%s needs --metric NAME (e.g. --metric loss)", "plot");
    if (!a->out) return usage_error("%s needs --out FILE.svg", "plot");
    size_t olen = strlen(a->out);
    if (olen < 4 || strcmp(a->out + olen - 4, ".svg"))
        return usage_error("--out must name an .svg file, not '%s' (for a PNG: rsvg-convert -o plot.png plot.svg)",
                           a->out);

    mt_error err = {0};
    mt_store_run runs[MAX_RUNS];
    int n_runs = 0;
    mt_status st = MT_OK;
    int rc = 0;
    for (int i = 0; i < a->n_pos && st == MT_OK && rc == 0; i++) {
        int64_t id;
        if (!parse_id(a->pos[i], &id))
            rc = usage_error("'%s' is not a run id", a->pos[i]);
        else if ((st = mt_store_run_get(s, id, &runs[n_runs], &err)) == MT_OK)
            n_runs++;
    }
    /* the metrics asked for, each followed by its eval_ twin; only the named ones must exist */
    const char *names[MAX_METRICS * 2];
    bool required[MAX_METRICS * 2], found[MAX_METRICS * 2] = {false};
    char *owned[MAX_METRICS];
    int n_names = 0, n_owned = 0;
    for (int i = 0; i < a->n_metrics; i++) {
        char twin[256];
        snprintf(twin, sizeof twin, "eval_%s", a->metrics[i]);
        const char *cand[2] = {a->metrics[i], strncmp(a->metrics[i], "eval_", 5) ? twin : NULL};
        for (int c = 0; c < 2 && cand[c]; c++) {
            int at = -1;
            for (int j = 0; j < n_names; j++)
                if (!strcmp(names[j], cand[c])) at = j;
            if (at < 0) {
                at = n_names++;
                names[at] = c ? (owned[n_owned++] = mt_xstrdup(twin)) : a->metrics[i];
                required[at] = false;
            }
            required[at] |= c == 0;
        }
    }
    plot_data *p = mt_xcalloc(1, sizeof *p); /* a few tens of kB: kept off the stack */
    /* grouped by run: a run's train and eval curves sit next to each other in the legend */
    for (int r = 0; r < n_runs && st == MT_OK && rc == 0; r++) {
        for (int m = 0; m < n_names && st == MT_OK; m++) {
            mt_store_series sr;
            if ((st = mt_store_metric_series(s, runs[r].id, names[m], &sr, &err)) != MT_OK) break;
            found[m] |= add_series(p, &runs[r], names[m], n_runs > 1, &sr);
            mt_store_series_free(&sr);
        }
    }
    for (int m = 0; m < n_names && st == MT_OK && rc == 0; m++) {
        if (!required[m] || found[m]) continue;
        mt_store_metric_list ml;
        mt_error e2 = {0};
        char have[512] = "";
        if (mt_store_metric_names(s, runs[0].id, &ml, &e2) == MT_OK) {
            for (size_t k = 0; k < ml.n; k++) {
                size_t len = strlen(have);
                snprintf(have + len, sizeof have - len, "%s%s", k ? ", " : "", ml.items[k].name);
            }
            mt_store_metric_list_free(&ml);
        }
        fprintf(stderr, "moetune " CMD ": no metric '%s' in run%s", names[m], n_runs > 1 ? "s" : "");
        for (int r = 0; r < n_runs; r++) fprintf(stderr, " %lld", (long long)runs[r].id);
        fprintf(stderr, " (run %lld has: %s)\n", (long long)runs[0].id, have[0] ? have : "no metrics");
        rc = 2;
    }
    if (st == MT_OK && rc == 0) {
        char title[512], ylab[256], joined[256] = "";
        for (int i = 0; i < a->n_metrics; i++) {
            size_t len = strlen(joined);
            snprintf(joined + len, sizeof joined - len, "%s%s", i ? ", " : "", a->metrics[i]);
        }
        if (n_runs == 1) {
            snprintf(title, sizeof title, "%s — run %lld (%s)", joined, (long long)runs[0].id, runs[0].name);
        } else {
            snprintf(title, sizeof title, "%s — runs", joined);
            for (int r = 0; r < n_runs; r++) {
                size_t len = strlen(title);
                snprintf(title + len, sizeof title - len, "%s %lld", r ? "," : "", (long long)runs[r].id);
            }
        }
        y_label(ylab, sizeof ylab, names, n_names);
        mt_plot_opts o = {.title = a->title ? a->title : title,
                          .x_label = "step (optimizer updates)",
                          .y_label = ylab,
                          .width = a->width,
                          .height = a->height,
                          .log_y = a->log_y,
                          .ema = a->smooth};
        char *svg = NULL;
        st = mt_plot_svg(&o, p->series, p->n, &svg, &err);
        if (st == MT_OK) st = mt_write_file_atomic(a->out, svg, strlen(svg), &err);
        if (st == MT_OK) printf("wrote %s (%zu curves)\n", a->out, p->n);
        free(svg);
    }
    plot_data_free(p);
    free(p);
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    for (int r = 0; r < n_runs; r++) mt_store_run_free(&runs[r]);
    if (rc) return rc;
    return st == MT_OK ? 0 : mt_cli_fail(CMD, &err);
}

int mt_cmd_runs(int argc, char **argv) {
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    if (!a.sub) {
        usage(stderr);
        return 2;
    }
    static const char *const subs[] = {"list", "show", "compare", "plot"};
    int which = -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(a.sub, subs[i])) which = i;
    if (which < 0) return usage_error("unknown command '%s' (list, show, compare, plot)", a.sub);
    if (which == 0 && a.n_pos) return usage_error("list takes no arguments (%s)", a.pos[0]);
    mt_store *s = NULL;
    if ((rc = open_store(&a, &s)) >= 0) return rc;
    switch (which) {
    case 0: rc = cmd_list(s); break;
    case 1: rc = cmd_show(s, &a); break;
    case 2: rc = cmd_compare(s, &a); break;
    default: rc = cmd_plot(s, &a); break;
    }
    mt_store_close(s);
    return rc;
}
