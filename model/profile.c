/* profile.c — the profiler behind `moetune profile`: per layer and part, wall time, FLOPs
 * counted from the shapes the pass runs and bytes moved under the model stated in model.h;
 * routing per MoE layer; what the DAP block rule would skip on the profiled sequences; the
 * table and the JSON report. The hooks it exports to the model's files are no-ops unless a
 * profile is set on the model (docs/profile.md). */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "model-impl.h"

#define NP MT_PROF_PART_COUNT

static const char *const part_names[NP] = {"embedding", "norm",   "attn_proj", "attn_core", "router",
                                           "experts",   "shared", "dense_mlp", "lora",      "lm_head"};

const char *mt_prof_part_name(mt_prof_part p) { return (unsigned)p < NP ? part_names[p] : "?"; }

struct mt_profile {
    const mt_model *m;
    int L, E, K;
    mt_prof_cell *cells;     /* [(L+1), NP]: layers, then the model-level parts */
    /* the open section */
    bool open;
    int cur_layer;
    mt_prof_part cur_part;
    double t0, lora_in;      /* start; LoRA seconds timed inside the section */
    uint64_t passes, rows;
    double pass_seconds;     /* wall time of the profiled passes */
    double dap_seconds;      /* spent evaluating the DAP rule (not part of any pass's work) */
    uint64_t *tpe;           /* [L, E] rows routed to each expert */
    uint64_t *route_tokens, *route_used; /* [L] */
    bool dap_on;
    mt_dap_opts dap_opts;
    int dap_block;
    mt_dap_counts *dap;      /* [L] */
};

mt_status mt_profile_init(mt_profile **out, const mt_model *m, const mt_dap_opts *dap, int dap_block, mt_error *err) {
    if (dap_block < 0) return mt_error_set(err, MT_ERR_INVALID, "profile: DAP block size %d", dap_block);
    if (dap && !(dap->threshold >= 0 && dap->threshold <= 1))
        return mt_error_set(err, MT_ERR_INVALID, "profile: DAP threshold %g is outside [0, 1]", (double)dap->threshold);
    mt_profile *p = mt_xcalloc(1, sizeof *p);
    p->m = m;
    p->L = m->cfg.n_layers;
    p->E = m->cfg.n_experts > 0 ? m->cfg.n_experts : 1;
    p->K = m->cfg.top_k;
    p->cells = mt_xcalloc((size_t)(p->L + 1) * NP, sizeof *p->cells);
    p->tpe = mt_xcalloc((size_t)p->L * p->E, sizeof *p->tpe);
    p->route_tokens = mt_xcalloc((size_t)p->L, sizeof *p->route_tokens);
    p->route_used = mt_xcalloc((size_t)p->L, sizeof *p->route_used);
    p->dap = mt_xcalloc((size_t)p->L, sizeof *p->dap);
    p->dap_on = dap && dap->threshold > 0;
    if (dap) p->dap_opts = *dap;
    p->dap_block = dap_block > 0 ? dap_block : 16;
    *out = p;
    return MT_OK;
}

void mt_profile_free(mt_profile *p) {
    if (!p) return;
    free(p->cells);
    free(p->tpe);
    free(p->route_tokens);
    free(p->route_used);
    free(p->dap);
    free(p);
}

void mt_model_set_profile(mt_model *m, mt_profile *p) { m->prof = p; }

const mt_prof_cell *mt_profile_cell(const mt_profile *p, int layer, mt_prof_part part) {
    MT_ASSERT(layer >= 0 && layer <= p->L && (unsigned)part < NP);
    return &p->cells[(size_t)layer * NP + part];
}

static mt_prof_cell *cell_at(mt_profile *p, int layer, mt_prof_part part) {
    return &p->cells[(size_t)layer * NP + part];
}

static void cell_add(mt_prof_cell *a, const mt_prof_cell *b) {
    a->seconds += b->seconds;
    a->flops += b->flops;
    a->bytes += b->bytes;
    a->calls += b->calls;
}

mt_prof_cell mt_profile_total(const mt_profile *p) {
    mt_prof_cell t = {0};
    for (size_t i = 0; i < (size_t)(p->L + 1) * NP; i++) cell_add(&t, &p->cells[i]);
    return t;
}

void mt_profile_passes(const mt_profile *p, uint64_t *passes, uint64_t *rows, double *seconds) {
    if (passes) *passes = p->passes;
    if (rows) *rows = p->rows;
    if (seconds) *seconds = p->pass_seconds;
}

const uint64_t *mt_profile_routing(const mt_profile *p, int layer, uint64_t *tokens, uint64_t *experts_used) {
    MT_ASSERT(layer >= 0 && layer < p->L);
    bool moe = p->m->layers[layer].moe;
    if (tokens) *tokens = p->route_tokens[layer];
    if (experts_used) *experts_used = p->route_used[layer];
    return moe ? p->tpe + (size_t)layer * p->E : NULL;
}

mt_dap_counts mt_profile_dap(const mt_profile *p, int layer) {
    MT_ASSERT(layer >= 0 && layer < p->L);
    return p->dap[layer];
}

/* ---- the hooks ---- */

void mt_prof_begin_(mt_profile *p, int layer, mt_prof_part part) {
    MT_ASSERT(!p->open && layer >= 0 && layer <= p->L);
    p->open = true;
    p->cur_layer = layer;
    p->cur_part = part;
    p->lora_in = 0;
    p->t0 = mt_now_seconds();
}

void mt_prof_end_(mt_profile *p) {
    double t = mt_now_seconds();
    MT_ASSERT(p->open);
    mt_prof_cell *c = cell_at(p, p->cur_layer, p->cur_part);
    c->seconds += t - p->t0 - p->lora_in;
    c->calls++;
    p->open = false;
}

void mt_prof_add_(mt_profile *p, double flops, double bytes) {
    if (!p->open) return;
    mt_prof_cell *c = cell_at(p, p->cur_layer, p->cur_part);
    c->flops += flops;
    c->bytes += bytes;
}

/* A weight's bytes as stored: what a GEMM over it reads. */
static double param_bytes(const mt_param *w) {
    switch (w->dtype) {
    case MT_DTYPE_BF16:
    case MT_DTYPE_F16: return (double)w->numel * 2;
    case MT_DTYPE_I8: {
        int64_t in = w->shape[w->ndim - 1], out = w->numel / (in > 0 ? in : 1);
        int64_t groups = w->qgroup > 0 ? (in + w->qgroup - 1) / w->qgroup : 1;
        return (double)w->numel + (double)out * groups * sizeof(float);
    }
    default: return (double)w->numel * sizeof(float);
    }
}

void mt_prof_linear_(mt_profile *p, const mt_linear *L, int n) {
    double bytes = param_bytes(L->weight) + (double)n * (L->in + L->out) * sizeof(float);
    if (L->bias) bytes += (double)L->out * sizeof(float);
    mt_prof_add_(p, 2.0 * n * L->in * (double)L->out, bytes);
}

void mt_prof_lora_(mt_profile *p, const mt_lowrank *d, int in, int out, int n, double seconds) {
    /* h = x·Aᵀ, then y += s·h·Bᵀ: A and B once, x in, h out and back in, y in and out */
    mt_prof_cell *c = cell_at(p, p->open ? p->cur_layer : p->L, MT_PROF_LORA);
    c->seconds += seconds;
    c->flops += 2.0 * n * d->r * ((double)in + out);
    c->bytes += ((double)d->r * (in + out) + (double)n * (in + 2.0 * d->r + 2.0 * out)) * sizeof(float);
    c->calls++;
    if (p->open) p->lora_in += seconds;
}

void mt_prof_norm_(mt_profile *p, int rows, int width) {
    mt_prof_add_(p, 4.0 * rows * width, (2.0 * rows * width + width) * sizeof(float));
}

void mt_prof_attn_core_(mt_profile *p, const mt_attn_args *aa, const int32_t *kv_start_host) {
    double keys = 0;
    for (int b = 0; b < aa->B; b++)
        for (int t = 0; t < aa->Tq; t++) {
            int ks = kv_start_host ? kv_start_host[(size_t)b * aa->Tq + t] : 0;
            keys += aa->q_offset + t + 1 - ks;
        }
    double qo = (double)aa->B * aa->Tq * aa->n_head * (aa->dqk + aa->dv);
    double kv = (double)aa->B * aa->Tk * aa->n_kv_head * (aa->dqk + aa->dv);
    mt_prof_add_(p, keys * aa->n_head * 2.0 * (aa->dqk + aa->dv), (qo + kv) * sizeof(float));
}

void mt_prof_attn_paged_(mt_profile *p, int N, const int32_t *pos, const int32_t *ks, int n_head, int dqk, int dv,
                         int kv_floats) {
    double keys = 0;
    for (int i = 0; i < N; i++) keys += pos[i] + 1 - (ks ? ks[i] : 0);
    double bytes = ((double)N * n_head * (dqk + dv) + keys * kv_floats) * sizeof(float);
    mt_prof_add_(p, keys * n_head * 2.0 * (dqk + dv), bytes);
}

void mt_prof_route_(mt_profile *p, int layer, int N, const int32_t *offsets, const float *w) {
    uint64_t *tpe = p->tpe + (size_t)layer * p->E;
    for (int e = 0; e < p->m->cfg.n_experts; e++) tpe[e] += (uint64_t)(offsets[e + 1] - offsets[e]);
    uint64_t used = 0;
    for (size_t i = 0; i < (size_t)N * p->K; i++) used += w[i] != 0.0f;
    p->route_tokens[layer] += (uint64_t)N;
    p->route_used[layer] += used;
}

void mt_prof_pass_(mt_profile *p, int rows, double seconds) {
    p->passes++;
    p->rows += (uint64_t)rows;
    p->pass_seconds += seconds;
}

/* The DAP rule on every query of a whole-sequence pass, as the paged decode would apply it
 * with the prefix in blocks of dap_block positions: for query t, blocks 0 .. t/B (the last one
 * holding the keys up to t), bounds from each block's per-channel key min/max. Queries of
 * different heads are separate queries (a head reads its own, or its KV group's, keys). */
void mt_prof_dap_(mt_profile *p, const mt_model *m, int layer, const mt_acts *a, int B, int T) {
    if (!p->dap_on) return;
    double t0 = mt_now_seconds();
    mt_dims d;
    mt_model_dims(&m->cfg, &d);
    int bs = p->dap_block, nbmax = (T + bs - 1) / bs;
    int dq = m->cfg.mla ? d.qk_hd : d.hd;
    int k_row = m->cfg.mla ? d.q_dim : d.kv_dim;
    float *kmin = mt_xmalloc((size_t)nbmax * dq * sizeof(float));
    float *kmax = mt_xmalloc((size_t)nbmax * dq * sizeof(float));
    float *bounds = mt_xmalloc((size_t)nbmax * sizeof(float));
    int *ntok = mt_xmalloc((size_t)nbmax * sizeof(int));
    uint8_t *keep = mt_xmalloc((size_t)nbmax);
    mt_dap_counts *c = &p->dap[layer];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < d.nh; h++) {
            int g = m->cfg.mla ? h : h / (d.nh / d.nkv);
            const float *kb = a->k + (size_t)b * T * k_row + (size_t)g * dq;
            for (int t = 0; t < T; t++) {
                int nb = t / bs + 1, last = nb - 1;
                /* a full block's summary is final once its last key is in; the last block's
                 * covers the keys up to t */
                mt_dap_block_summary(kb + (size_t)last * bs * k_row, t - last * bs + 1, dq, k_row,
                                     kmin + (size_t)last * dq, kmax + (size_t)last * dq);
                const float *q = a->q + ((size_t)b * T + t) * d.q_dim + (size_t)h * dq;
                for (int j = 0; j < nb; j++) {
                    bounds[j] = mt_dap_block_bound(q, kmin + (size_t)j * dq, kmax + (size_t)j * dq, dq);
                    ntok[j] = j < last ? bs : t - last * bs + 1;
                }
                mt_dap_select(bounds, ntok, nb, m->attn_scale, &p->dap_opts, keep, c);
            }
        }
    free(kmin);
    free(kmax);
    free(bounds);
    free(ntok);
    free(keep);
    p->dap_seconds += mt_now_seconds() - t0;
}

/* ---- names and options ---- */

mt_status mt_prof_breakdown_from_name(const char *name, mt_prof_breakdown *out) {
    static const char *const names[] = {"layer_type", "layer", "op"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) {
            *out = (mt_prof_breakdown)i;
            return MT_OK;
        }
    return MT_ERR_INVALID;
}

mt_status mt_prof_metrics_from_list(const char *list, unsigned *out, mt_error *err) {
    static const char *const names[] = {"latency", "flops", "memory"};
    unsigned bits = 0;
    const char *s = list;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        int k = -1;
        for (int i = 0; i < 3; i++)
            if (strlen(names[i]) == n && !strncmp(s, names[i], n)) k = i;
        if (k < 0)
            return mt_error_set(err, MT_ERR_INVALID, "--metrics: unknown metric \"%.*s\" (latency, flops, memory)",
                                (int)n, s);
        bits |= 1u << k;
        s += n + (e ? 1 : 0);
    }
    if (!bits) return mt_error_set(err, MT_ERR_INVALID, "--metrics: empty list (latency, flops, memory)");
    *out = bits;
    return MT_OK;
}

size_t mt_profile_weight_bytes(const mt_model *m) {
    double b = 0;
    for (int i = 0; i < m->n_params; i++) b += param_bytes(&m->params[i]);
    return (size_t)b;
}

size_t mt_profile_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024; /* Linux reports kilobytes */
}

/* ---- the report ---- */

typedef struct row {
    char name[64];
    mt_prof_cell c;
} row;

/* The rows of a breakdown; returns how many (at most (L+1)·NP). */
static int build_rows(const mt_profile *p, mt_prof_breakdown b, row *rows) {
    int n = 0;
    if (b == MT_PROF_BY_LAYER_TYPE) {
        static const struct {
            const char *name;
            unsigned parts; /* bit per part */
        } types[] = {
            {"attention", 1u << MT_PROF_ATTN_PROJ | 1u << MT_PROF_ATTN_CORE},
            {"moe", 1u << MT_PROF_ROUTER | 1u << MT_PROF_EXPERTS | 1u << MT_PROF_SHARED},
            {"dense-mlp", 1u << MT_PROF_DENSE_MLP},
            {"norm", 1u << MT_PROF_NORM},
            {"lora", 1u << MT_PROF_LORA},
            {"lm_head", 1u << MT_PROF_LM_HEAD},
            {"embedding", 1u << MT_PROF_EMBEDDING},
        };
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
            row r;
            memset(&r, 0, sizeof r);
            snprintf(r.name, sizeof r.name, "%s", types[t].name);
            for (int l = 0; l <= p->L; l++)
                for (int k = 0; k < NP; k++)
                    if (types[t].parts >> k & 1u) cell_add(&r.c, mt_profile_cell(p, l, (mt_prof_part)k));
            if (r.c.calls) rows[n++] = r;
        }
        return n;
    }
    for (int l = 0; l <= p->L; l++) {
        const char *kind = l == p->L ? NULL : p->m->layers[l].moe ? "moe" : "dense";
        if (b == MT_PROF_BY_LAYER) {
            row r;
            memset(&r, 0, sizeof r);
            if (kind)
                snprintf(r.name, sizeof r.name, "layer %d (%s)", l, kind);
            else
                snprintf(r.name, sizeof r.name, "model (embed, final norm, head)");
            for (int k = 0; k < NP; k++) cell_add(&r.c, mt_profile_cell(p, l, (mt_prof_part)k));
            if (r.c.calls) rows[n++] = r;
            continue;
        }
        for (int k = 0; k < NP; k++) {
            const mt_prof_cell *c = mt_profile_cell(p, l, (mt_prof_part)k);
            if (!c->calls) continue;
            row r = {{0}, *c};
            if (kind)
                snprintf(r.name, sizeof r.name, "L%d %s", l, part_names[k]);
            else
                snprintf(r.name, sizeof r.name, "model %s", part_names[k]);
            rows[n++] = r;
        }
    }
    return n;
}

typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->s = mt_xrealloc(b->s, b->cap);
    }
}

static void table_row(sbuf *b, const char *name, const mt_prof_cell *c, double wall, unsigned metrics, bool time_only) {
    sb_printf(b, "%-32s", name);
    bool lat = metrics & MT_PROF_LATENCY;
    if (lat) sb_printf(b, " %10.3f %7.1f", c->seconds * 1e3, wall > 0 ? 100.0 * c->seconds / wall : 0);
    if (metrics & MT_PROF_FLOPS) {
        if (time_only)
            sb_printf(b, " %10s", "");
        else
            sb_printf(b, " %10.4f", c->flops * 1e-9);
        if (lat) {
            if (time_only || c->seconds <= 0)
                sb_printf(b, " %9s", "");
            else
                sb_printf(b, " %9.2f", c->flops * 1e-9 / c->seconds);
        }
    }
    if (metrics & MT_PROF_MEMORY) {
        if (time_only)
            sb_printf(b, " %10s", "");
        else
            sb_printf(b, " %10.3f", c->bytes * 1e-6);
        if (lat) {
            if (time_only || c->seconds <= 0)
                sb_printf(b, " %8s", "");
            else
                sb_printf(b, " %8.2f", c->bytes * 1e-9 / c->seconds);
        }
    }
    sb_printf(b, "\n");
}

static mt_dap_counts dap_sum(const mt_profile *p) {
    mt_dap_counts t = {0};
    for (int l = 0; l < p->L; l++) {
        t.queries += p->dap[l].queries;
        t.blocks += p->dap[l].blocks;
        t.skipped += p->dap[l].skipped;
        t.fallbacks += p->dap[l].fallbacks;
    }
    return t;
}

static double untimed_seconds(const mt_profile *p) {
    double o = p->pass_seconds - mt_profile_total(p).seconds - p->dap_seconds;
    return o > 0 ? o : 0;
}

char *mt_profile_table(const mt_profile *p, const char *title, mt_prof_breakdown bd, unsigned metrics,
                       const mt_prof_memory *mem) {
    sbuf b = {0};
    row *rows = mt_xcalloc((size_t)(p->L + 1) * NP, sizeof *rows);
    int n = build_rows(p, bd, rows);
    double wall = p->pass_seconds - p->dap_seconds;
    sb_printf(&b, "%s: %llu passes, %llu rows (tokens), %.3f ms\n", title ? title : "profile",
              (unsigned long long)p->passes, (unsigned long long)p->rows, wall * 1e3);
    sb_printf(&b, "%-32s", "part");
    bool lat = metrics & MT_PROF_LATENCY;
    if (lat) sb_printf(&b, " %10s %7s", "time ms", "share %");
    if (metrics & MT_PROF_FLOPS) {
        sb_printf(&b, " %10s", "GFLOP");
        if (lat) sb_printf(&b, " %9s", "GFLOP/s");
    }
    if (metrics & MT_PROF_MEMORY) {
        sb_printf(&b, " %10s", "MB moved");
        if (lat) sb_printf(&b, " %8s", "GB/s");
    }
    sb_printf(&b, "\n");
    for (int i = 0; i < n; i++) table_row(&b, rows[i].name, &rows[i].c, wall, metrics, false);
    mt_prof_cell other = {.seconds = untimed_seconds(p)};
    if (lat) table_row(&b, "other (glue, loss; untimed)", &other, wall, metrics, true);
    mt_prof_cell tot = mt_profile_total(p);
    tot.seconds = wall;
    table_row(&b, "total", &tot, wall, metrics, false);
    free(rows);

    for (int l = 0; l < p->L; l++) {
        uint64_t tokens, used;
        const uint64_t *tpe = mt_profile_routing(p, l, &tokens, &used);
        if (!tpe || !tokens) continue;
        uint64_t routed = 0, lo = UINT64_MAX, hi = 0;
        for (int e = 0; e < p->m->cfg.n_experts; e++) {
            routed += tpe[e];
            lo = tpe[e] < lo ? tpe[e] : lo;
            hi = tpe[e] > hi ? tpe[e] : hi;
        }
        sb_printf(&b, "moe layer %d: experts/token %.3f (routed slots/token %.3f), tokens per expert", l,
                  (double)used / tokens, (double)routed / tokens);
        if (p->m->cfg.n_experts <= 32) {
            sb_printf(&b, " [");
            for (int e = 0; e < p->m->cfg.n_experts; e++)
                sb_printf(&b, "%s%llu", e ? " " : "", (unsigned long long)tpe[e]);
            sb_printf(&b, "]\n");
        } else {
            sb_printf(&b, " min %llu, mean %.1f, max %llu\n", (unsigned long long)lo,
                      (double)routed / p->m->cfg.n_experts, (unsigned long long)hi);
        }
    }
    if (p->dap_on) {
        mt_dap_counts t = dap_sum(p);
        sb_printf(&b,
                  "dap rule (threshold %g, blocks of %d, %d sink + %d local kept, mass floor %g): would skip %.2f%% of "
                  "%llu key blocks over %llu query-head pairs (%llu fallbacks); the rule's skip fraction on these "
                  "sequences, not a measured speed-up (evaluated in %.3f ms, outside the table)\n",
                  (double)p->dap_opts.threshold, p->dap_block, p->dap_opts.n_sink_blocks, p->dap_opts.n_local_blocks,
                  (double)p->dap_opts.mass_floor, t.blocks ? 100.0 * (double)t.skipped / (double)t.blocks : 0.0,
                  (unsigned long long)t.blocks, (unsigned long long)t.queries, (unsigned long long)t.fallbacks,
                  p->dap_seconds * 1e3);
    }
    if (mem && (metrics & MT_PROF_MEMORY))
        sb_printf(&b, "memory: weights %.3f MB, workspace %.3f MB, KV cache %.3f MB, peak RSS %.3f MB\n",
                  mem->weight_bytes * 1e-6, mem->workspace_bytes * 1e-6, mem->kv_bytes * 1e-6,
                  mem->peak_rss_bytes * 1e-6);
    return b.s;
}

static cJSON *cell_json(const mt_prof_cell *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seconds", c->seconds);
    cJSON_AddNumberToObject(o, "flops", c->flops);
    cJSON_AddNumberToObject(o, "bytes", c->bytes);
    cJSON_AddNumberToObject(o, "calls", (double)c->calls);
    return o;
}

static cJSON *dap_json(const mt_dap_counts *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "queries", (double)c->queries);
    cJSON_AddNumberToObject(o, "blocks", (double)c->blocks);
    cJSON_AddNumberToObject(o, "skipped", (double)c->skipped);
    cJSON_AddNumberToObject(o, "fallbacks", (double)c->fallbacks);
    cJSON_AddNumberToObject(o, "skip_fraction", c->blocks ? (double)c->skipped / (double)c->blocks : 0.0);
    return o;
}

char *mt_profile_json(const mt_profile *p, const mt_prof_memory *mem) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "passes", (double)p->passes);
    cJSON_AddNumberToObject(root, "rows", (double)p->rows);
    cJSON_AddNumberToObject(root, "wall_seconds", p->pass_seconds - p->dap_seconds);
    cJSON_AddNumberToObject(root, "untimed_seconds", untimed_seconds(p));
    mt_prof_cell tot = mt_profile_total(p);
    cJSON_AddItemToObject(root, "totals", cell_json(&tot));

    row *rows = mt_xcalloc((size_t)(p->L + 1) * NP, sizeof *rows);
    int n = build_rows(p, MT_PROF_BY_LAYER_TYPE, rows);
    cJSON *bt = cJSON_AddObjectToObject(root, "by_layer_type");
    for (int i = 0; i < n; i++) cJSON_AddItemToObject(bt, rows[i].name, cell_json(&rows[i].c));
    free(rows);
    cJSON *parts = cJSON_AddObjectToObject(root, "parts");
    for (int k = 0; k < NP; k++) {
        mt_prof_cell s = {0};
        for (int l = 0; l <= p->L; l++) cell_add(&s, mt_profile_cell(p, l, (mt_prof_part)k));
        cJSON_AddItemToObject(parts, part_names[k], cell_json(&s));
    }
    cJSON *layers = cJSON_AddArrayToObject(root, "layers");
    for (int l = 0; l <= p->L; l++) {
        cJSON *o = cJSON_CreateObject();
        if (l < p->L) {
            cJSON_AddNumberToObject(o, "layer", l);
            cJSON_AddStringToObject(o, "type", p->m->layers[l].moe ? "moe" : "dense");
        } else {
            cJSON_AddStringToObject(o, "type", "model");
        }
        cJSON *lp = cJSON_AddObjectToObject(o, "parts");
        for (int k = 0; k < NP; k++) {
            const mt_prof_cell *c = mt_profile_cell(p, l, (mt_prof_part)k);
            if (c->calls) cJSON_AddItemToObject(lp, part_names[k], cell_json(c));
        }
        if (l < p->L && p->dap_on) cJSON_AddItemToObject(o, "dap", dap_json(&p->dap[l]));
        cJSON_AddItemToArray(layers, o);
    }
    cJSON *moe = cJSON_AddArrayToObject(root, "moe");
    for (int l = 0; l < p->L; l++) {
        uint64_t tokens, used;
        const uint64_t *tpe = mt_profile_routing(p, l, &tokens, &used);
        if (!tpe) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", l);
        cJSON_AddNumberToObject(o, "tokens", (double)tokens);
        uint64_t routed = 0;
        cJSON *arr = cJSON_AddArrayToObject(o, "tokens_per_expert");
        for (int e = 0; e < p->m->cfg.n_experts; e++) {
            routed += tpe[e];
            cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)tpe[e]));
        }
        cJSON_AddNumberToObject(o, "experts_per_token", tokens ? (double)used / tokens : 0.0);
        cJSON_AddNumberToObject(o, "routed_slots_per_token", tokens ? (double)routed / tokens : 0.0);
        cJSON_AddItemToArray(moe, o);
    }
    cJSON *dap = cJSON_AddObjectToObject(root, "dap");
    cJSON_AddBoolToObject(dap, "evaluated", p->dap_on);
    if (p->dap_on) {
        cJSON_AddNumberToObject(dap, "threshold", p->dap_opts.threshold);
        cJSON_AddNumberToObject(dap, "block", p->dap_block);
        cJSON_AddNumberToObject(dap, "sink_blocks", p->dap_opts.n_sink_blocks);
        cJSON_AddNumberToObject(dap, "local_blocks", p->dap_opts.n_local_blocks);
        cJSON_AddNumberToObject(dap, "mass_floor", p->dap_opts.mass_floor);
        mt_dap_counts t = dap_sum(p);
        cJSON_AddItemToObject(dap, "total", dap_json(&t));
        cJSON_AddNumberToObject(dap, "analysis_seconds", p->dap_seconds);
        cJSON_AddStringToObject(dap, "note",
                                "the fraction of key blocks the rule would skip on these sequences; DAP is not wired "
                                "into the attention kernels, so no time is saved");
    }
    if (mem) {
        cJSON *o = cJSON_AddObjectToObject(root, "memory");
        cJSON_AddNumberToObject(o, "weight_bytes", (double)mem->weight_bytes);
        cJSON_AddNumberToObject(o, "workspace_bytes", (double)mem->workspace_bytes);
        cJSON_AddNumberToObject(o, "kv_bytes", (double)mem->kv_bytes);
        cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)mem->peak_rss_bytes);
    }
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    MT_ASSERT(s);
    char *out = mt_xstrdup(s);
    cJSON_free(s);
    return out;
}

/* ---- input and the profiled run ---- */

mt_status mt_profile_read_input(const char *path, const mt_tokenizer *tok, int32_t **ids, size_t *n, mt_error *err) {
    char *text = NULL;
    size_t len = 0;
    mt_status st = mt_read_file(path, &text, &len, err);
    if (st) return st;
    int32_t *all = NULL;
    size_t n_all = 0, cap = 0;
    int line = 0;
    for (char *s = text; s < text + len && !st;) {
        char *e = memchr(s, '\n', (size_t)(text + len - s));
        size_t ll = e ? (size_t)(e - s) : (size_t)(text + len - s);
        line++;
        char *next = s + ll + 1;
        s[ll] = '\0';
        if (ll && s[ll - 1] == '\r') s[--ll] = '\0';
        const char *p = s;
        while (isspace((unsigned char)*p)) p++;
        if (!*p) {
            s = next;
            continue;
        }
        const char *doc = s;
        size_t doc_len = ll;
        cJSON *j = NULL;
        if (*p == '{') {
            j = cJSON_Parse(p);
            const cJSON *t = j ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
            if (!cJSON_IsString(t)) {
                st = mt_error_set(err, MT_ERR_FORMAT, "%s:%d: %s", path, line,
                                  j ? "a JSON line needs a string \"text\"" : "a line starting with '{' is not valid JSON");
                cJSON_Delete(j);
                break;
            }
            doc = t->valuestring;
            doc_len = strlen(doc);
        }
        int32_t *d = NULL;
        size_t nd = 0;
        st = mt_tokenizer_encode(tok, doc, doc_len, true, &d, &nd, err);
        cJSON_Delete(j);
        if (st) {
            mt_error_prefix(err, "%s:%d: ", path, line);
            break;
        }
        if (n_all + nd > cap) {
            cap = (n_all + nd) * 2 + 64;
            all = mt_xrealloc(all, cap * sizeof *all);
        }
        memcpy(all + n_all, d, nd * sizeof *d);
        n_all += nd;
        free(d);
        s = next;
    }
    free(text);
    if (!st && n_all < 2) st = mt_error_set(err, MT_ERR_INVALID, "%s: no text to profile (%zu tokens)", path, n_all);
    if (st) {
        free(all);
        return st;
    }
    *ids = all;
    *n = n_all;
    return MT_OK;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static mt_status profile_decode(mt_model *m, const int32_t *prompt, int n_prompt, const mt_profile_run *run,
                                mt_profile *dec, mt_profile_run_result *res, mt_error *err) {
    int max_seq = n_prompt + run->decode;
    if (max_seq > m->rope_len)
        return mt_error_set(err, MT_ERR_INVALID, "profile: a %d-token prompt and %d decode steps exceed %d positions",
                            n_prompt, run->decode, m->rope_len);
    mt_kv_cache *c = NULL;
    float *logits = mt_xmalloc((size_t)m->cfg.vocab_size * sizeof(float));
    mt_status st = mt_kv_cache_init(&c, m, max_seq, err);
    if (!st) st = mt_kv_cache_set_adapter(c, run->adapter, err);
    if (!st) st = mt_model_decode(m, c, prompt, n_prompt, logits, err);
    mt_model_set_profile(m, dec);
    for (int i = 0; i < run->decode && !st; i++) {
        int32_t t = argmax(logits, m->cfg.vocab_size);
        st = mt_model_decode(m, c, &t, 1, logits, err);
        if (!st) res->decoded++;
    }
    mt_model_set_profile(m, NULL);
    if (c) res->kv_bytes = mt_kv_cache_bytes(c);
    mt_kv_cache_free(c);
    free(logits);
    return st;
}

mt_status mt_profile_model(mt_model *m, const int32_t *ids, size_t n, const mt_profile_run *run, mt_profile *fwd,
                           mt_profile *dec, mt_profile_run_result *res, mt_error *err) {
    memset(res, 0, sizeof *res);
    int T = run->max_len, Bmax = run->batch;
    if (T < 2 || Bmax < 1) return mt_error_set(err, MT_ERR_INVALID, "profile: rows of %d tokens, batches of %d", T, Bmax);
    if (T > m->rope_len)
        return mt_error_set(err, MT_ERR_INVALID, "profile: --max-len %d is above max_position_embeddings %d", T,
                            m->rope_len);
    if (n < 2) return mt_error_set(err, MT_ERR_INVALID, "profile: %zu tokens, need at least 2", n);
    if (run->decode > 0 && !dec) return mt_error_set(err, MT_ERR_INVALID, "profile: decode without a decode profile");
    /* the stream in rows of T, the remainder (≥ 2 tokens) a row of its own */
    size_t full = n / (size_t)T, rest = n % (size_t)T;
    size_t n_rows = full + (rest >= 2);
    if (run->max_rows > 0 && n_rows > (size_t)run->max_rows) {
        n_rows = (size_t)run->max_rows;
        if (n_rows <= full) rest = 0;
    }
    int max_rank = run->adapter && run->adapter->max_rank > MT_DEFAULT_MAX_RANK ? run->adapter->max_rank : 0;
    mt_workspace *ws = NULL;
    mt_status st = mt_workspace_init(&ws, m, Bmax, T, false, max_rank, err);
    if (st) return st;
    int32_t *tgt = mt_xmalloc((size_t)Bmax * T * sizeof(int32_t));
    double loss = 0;
    int64_t scored = 0;
    for (size_t done = 0; done < n_rows && !st;) {
        /* full rows in batches of up to Bmax, then the short last row alone */
        size_t B = 1, Tb = rest;
        const int32_t *tok = ids + full * (size_t)T;
        if (done < full) {
            B = full - done < (size_t)Bmax ? full - done : (size_t)Bmax;
            if (B > n_rows - done) B = n_rows - done;
            Tb = (size_t)T;
            tok = ids + done * (size_t)T;
        }
        for (size_t b = 0; b < B; b++)
            for (size_t t = 0; t < Tb; t++) tgt[b * Tb + t] = t + 1 < Tb ? tok[b * Tb + t + 1] : MT_IGNORE_INDEX;
        mt_batch batch = {.B = (int)B, .T = (int)Tb, .tokens = tok, .targets = tgt};
        mt_forward_opts o = {.adapter = run->adapter};
        mt_forward_result fr;
        mt_model_set_profile(m, fwd);
        st = mt_model_forward(m, ws, &batch, &o, &fr, err);
        mt_model_set_profile(m, NULL);
        if (st) break;
        loss += fr.loss_sum;
        scored += fr.n_tokens;
        res->rows += B;
        res->tokens += B * Tb;
        done += B;
    }
    res->workspace_bytes = mt_workspace_bytes(ws);
    res->loss_mean = scored ? loss / (double)scored : 0;
    free(tgt);
    mt_workspace_free(ws);
    if (!st && run->decode > 0) st = profile_decode(m, ids, (int)(n < (size_t)T ? n : (size_t)T), run, dec, res, err);
    return st;
}
