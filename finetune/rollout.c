/* rollout.c — the part of GRPO and PPO that is the same for both: RL prompts (TRL's "prompt"
 * column, string or messages, and the reference answer rules compare with), completions
 * sampled from the policy itself on the paged KV cache — a prompt prefilled once, its group
 * forking the blocks, the experts of every fed token recorded — their rewards from rules and
 * a reward model, the training rows built from them with the routes to replay, and the
 * held-out evaluation. Sampling draws from counter-based streams, so a resumed run samples
 * what the uninterrupted one did. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pairs-impl.h"
#include "recipe-impl.h"
#include "peft/lora.h"
#include "rewards-impl.h"
#include "rollout-impl.h"
#include "store/store.h"

/* ---- prompts ---- */

static void prompts_free(mt_rl_prompts *s) {
    for (int64_t i = 0; i < s->n; i++) {
        free(s->p[i].ids);
        free(s->p[i].answer);
    }
    free(s->p);
    memset(s, 0, sizeof *s);
}

/* The keys TRL datasets name a prompt's reference answer by. */
static const char *const k_answer_keys[] = {"answer", "solution", "ground_truth", "reference", "completion"};

/* JSONL lines {"prompt": string | messages, "answer": ...}; split: −1 all, 0 train, 1 eval (by the
 * hash of the line's prompt and answer, as pairs split). Prompts keep their last max_prompt
 * tokens. */
static mt_status load_prompts(const mt_run *run, const mt_recipe_list *paths, int split, double eval_split,
                              int max_prompt, mt_rl_prompts *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    size_t cap = 0;
    mt_status st = MT_OK;
    for (size_t f = 0; f < paths->n && st == MT_OK; f++) {
        const char *path = paths->items[f];
        char *text;
        size_t len;
        MT_TRY(mt_read_file(path, &text, &len, err));
        long line = 0;
        for (size_t off = 0; off < len && st == MT_OK;) {
            size_t e = off;
            while (e < len && text[e] != '\n') e++;
            line++;
            char where[4200];
            snprintf(where, sizeof where, "%s:%ld", path, line);
            char *s = mt_xmalloc(e - off + 1);
            memcpy(s, text + off, e - off);
            s[e - off] = 0;
            off = e + 1;
            size_t a = 0;
            while (s[a] == ' ' || s[a] == '\t' || s[a] == '\r') a++;
            if (!s[a]) {
                free(s);
                continue;
            }
            cJSON *j = cJSON_Parse(s);
            const cJSON *pr = j ? cJSON_GetObjectItemCaseSensitive(j, "prompt") : NULL;
            const cJSON *ans = NULL;
            for (size_t k = 0; j && !ans && k < sizeof k_answer_keys / sizeof *k_answer_keys; k++) {
                ans = cJSON_GetObjectItemCaseSensitive(j, k_answer_keys[k]);
                if (ans && !cJSON_IsString(ans)) {
                    st = mt_error_set(err, MT_ERR_FORMAT, "%s: \"%s\" must be a string", where, k_answer_keys[k]);
                    break;
                }
            }
            if (st == MT_OK && (!j || !cJSON_IsObject(j)))
                st = mt_error_set(err, MT_ERR_FORMAT, "%s: not a JSON object", where);
            else if (st == MT_OK && !cJSON_IsString(pr) && !cJSON_IsArray(pr))
                st = mt_error_set(err, MT_ERR_FORMAT, "%s: \"prompt\" must be a string or a list of messages", where);
            char *ptext = NULL;
            if (st == MT_OK) ptext = cJSON_IsString(pr) ? mt_xstrdup(pr->valuestring) : cJSON_PrintUnformatted(pr);
            bool keep = st == MT_OK;
            if (keep && split >= 0) {
                mt_sha256 h;
                uint8_t d[32];
                char hex[65];
                mt_sha256_init(&h);
                mt_sha256_update(&h, ptext, strlen(ptext) + 1);
                if (ans) mt_sha256_update(&h, ans->valuestring, strlen(ans->valuestring));
                mt_sha256_final(&h, d);
                for (int k = 0; k < 32; k++) snprintf(hex + 2 * k, 3, "%02x", d[k]);
                keep = mt_pairs_is_eval(hex, eval_split) == (split == 1);
            }
            if (keep) {
                int32_t *ids = NULL;
                size_t n = 0;
                st = mt_prompt_encode(run->tok, ptext, cJSON_IsArray(pr), where, &ids, &n, err);
                if (st == MT_OK && n == 0) st = mt_error_set(err, MT_ERR_FORMAT, "%s: an empty prompt", where);
                if (st == MT_OK) {
                    if ((int)n > max_prompt) {
                        memmove(ids, ids + (n - (size_t)max_prompt), (size_t)max_prompt * sizeof *ids);
                        n = (size_t)max_prompt;
                        out->n_truncated++;
                    }
                    if ((size_t)out->n == cap) {
                        cap = cap ? 2 * cap : 64;
                        out->p = mt_xrealloc(out->p, cap * sizeof *out->p);
                    }
                    out->p[out->n++] = (mt_rl_prompt){.ids = ids, .n = (int)n, .answer = ans ? mt_xstrdup(ans->valuestring) : NULL};
                } else {
                    free(ids);
                }
            }
            free(ptext);
            cJSON_Delete(j);
            free(s);
        }
        free(text);
    }
    if (st != MT_OK) prompts_free(out);
    return st;
}

void mt_rollout_free(mt_rollout *r) {
    free(r->seq);
    free(r->P);
    free(r->C);
    free(r->prompt_of);
    free(r->eos);
    free(r->entropy);
    free(r->routes);
    free(r->reward);
    free(r->per_fn);
    memset(r, 0, sizeof *r);
}


static bool is_eos(const mt_run *run, int32_t id) {
    const mt_config *c = mt_model_config(run->model);
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] == id) return true;
    return mt_tokenizer_eos_id(run->tok) == id;
}

/* Entropy of softmax(logits) (already divided by the temperature). */
static double entropy_of(const float *z, int V) {
    float mx = z[0];
    for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
    double s = 0, sz = 0;
    for (int v = 0; v < V; v++) {
        double e = exp((double)z[v] - mx);
        s += e;
        sz += e * ((double)z[v] - mx);
    }
    return log(s) - sz / s;
}

int mt_rl_rank_prompts(const mt_run *run, const int64_t *idx, int64_t *pidx, int *slot) {
    int mb = run->r->train.micro_batch, ga = run->r->train.grad_accum, np = 0;
    for (int k = run->rank; k < ga; k += run->n_ranks)
        for (int i = k * mb; i < (k + 1) * mb; i++) {
            pidx[np] = idx[i];
            slot[np++] = i;
        }
    return np;
}

/* Samples G completions for each of prompts pidx[0..np) (rows prompt-major) into ro. seed keys
 * the streams: completion k of prompt i draws from mt_hash_u64(seed, slot[i] · G + k), its
 * place in the whole step, so that the rank count does not change what is sampled. */
mt_status mt_rl_sample(mt_run *run, mt_rl_env *g, const mt_rl_prompts *ps, const int64_t *pidx, const int *slot,
                       int np, int G, uint64_t seed, mt_rollout *ro, mt_error *err) {
    const mt_config *cfg = mt_model_config(run->model);
    int T = g->T, L = cfg->n_layers, K = cfg->n_experts > 0 ? cfg->top_k : 1, V = cfg->vocab_size;
    int n = np * G;
    memset(ro, 0, sizeof *ro);
    ro->n = n;
    ro->T = T;
    ro->L = L;
    ro->K = K;
    ro->seq = mt_xcalloc((size_t)n * T, sizeof(int32_t));
    ro->P = mt_xcalloc((size_t)n, sizeof(int));
    ro->C = mt_xcalloc((size_t)n, sizeof(int));
    ro->prompt_of = mt_xcalloc((size_t)n, sizeof(int));
    ro->eos = mt_xcalloc((size_t)n, sizeof(bool));
    ro->entropy = mt_xcalloc((size_t)n, sizeof(double));
    size_t per_pos = (size_t)L * K;
    ro->routes = mt_xmalloc((size_t)n * T * per_pos * sizeof(int32_t));
    memset(ro->routes, 0xff, (size_t)n * T * per_pos * sizeof(int32_t));
    ro->reward = mt_xcalloc((size_t)n, sizeof(float));
    ro->per_fn = mt_xcalloc((size_t)n * (g->F ? g->F : 1), sizeof(float));

    int bs = 16, per_seq = (T + bs - 1) / bs + 1;
    mt_kv_pool_opts po = {.block_size = bs, .n_blocks = (np + n) * per_seq, .max_seqs = np + n, .max_seq_len = T};
    mt_kv_pool *pool = NULL;
    mt_decoder *dec = NULL;
    int rows = n > T ? n : T;
    const mt_adapter *ad = mt_lora_adapter(run->lora);
    mt_status st = mt_kv_pool_init(&pool, run->model, &po, err);
    if (st == MT_OK) st = mt_decoder_init(&dec, run->model, rows, run->lora ? mt_lora_max_rank(run->lora) : 0, err);
    int32_t *tok = mt_xcalloc((size_t)rows, sizeof(int32_t)), *sq = mt_xcalloc((size_t)rows, sizeof(int32_t));
    int32_t *lrows = mt_xcalloc((size_t)rows, sizeof(int32_t));
    /* dense layers leave their entries at −1: nothing to replay there */
    int32_t *rt = mt_xmalloc((size_t)L * rows * K * sizeof(int32_t));
    int *row_of = mt_xcalloc((size_t)rows, sizeof(int)), *seqs = mt_xcalloc((size_t)n, sizeof(int));
    float *logits = mt_xmalloc((size_t)rows * V * sizeof(float));
    float *cur = mt_xmalloc((size_t)n * V * sizeof(float));
    bool *live = mt_xcalloc((size_t)n, sizeof(bool));
    mt_rng *rng = mt_xcalloc((size_t)n, sizeof(mt_rng));
    float inv_t = g->sample.temperature > 0 ? 1.0f / g->sample.temperature : 1.0f;

    /* prefill each prompt once; its group forks the blocks */
    for (int i = 0; i < np && st == MT_OK; i++) {
        const mt_rl_prompt *p = &ps->p[pidx[i]];
        int ps_seq;
        st = mt_kv_seq_open(pool, &ps_seq, err);
        if (st != MT_OK) break;
        for (int t = 0; t < p->n; t++) {
            tok[t] = p->ids[t];
            sq[t] = ps_seq;
        }
        lrows[0] = p->n - 1;
        memset(rt, 0xff, (size_t)L * rows * K * sizeof(int32_t));
        mt_decode_batch b = {.n_rows = p->n, .tokens = tok, .seq = sq, .adapters = &ad, .n_slots = 1,
                             .logit_rows = lrows, .n_logits = 1, .route_out = cfg->n_experts > 0 ? rt : NULL};
        st = mt_decode_step(dec, pool, &b, logits, err);
        for (int k = 0; st == MT_OK && k < G; k++) {
            int r = i * G + k;
            ro->P[r] = p->n;
            ro->prompt_of[r] = (int)pidx[i];
            memcpy(ro->seq + (size_t)r * T, p->ids, (size_t)p->n * sizeof(int32_t));
            for (int t = 0; t < p->n && cfg->n_experts > 0; t++)
                for (int l = 0; l < L; l++)
                    memcpy(ro->routes + (((size_t)r * T + t) * L + l) * K, rt + ((size_t)l * p->n + t) * K,
                           (size_t)K * sizeof(int32_t));
            st = mt_kv_seq_fork(pool, ps_seq, &seqs[r], err);
            memcpy(cur + (size_t)r * V, logits, (size_t)V * sizeof(float));
            mt_rng_seed(&rng[r], mt_hash_u64(seed, (uint64_t)(slot ? slot[i] : i) * (uint64_t)G + (uint64_t)k));
            live[r] = true;
        }
        mt_kv_seq_close(pool, ps_seq);
    }
    /* one token for every live completion per step */
    while (st == MT_OK) {
        int nr = 0;
        for (int r = 0; r < n; r++) {
            if (!live[r]) continue;
            float *z = cur + (size_t)r * V;
            for (int v = 0; v < V; v++) z[v] *= inv_t;
            ro->entropy[r] += entropy_of(z, V);
            mt_sample_opts so = g->sample;
            so.temperature = 1.0f; /* already divided */
            int32_t id = mt_sample(&so, z, V, &rng[r]);
            int pos = ro->P[r] + ro->C[r];
            ro->seq[(size_t)r * T + pos] = id;
            ro->C[r]++;
            int max_c = g->max_new < T - ro->P[r] ? g->max_new : T - ro->P[r];
            if (is_eos(run, id)) {
                ro->eos[r] = true;
                live[r] = false;
            } else if (ro->C[r] >= max_c) {
                live[r] = false;
            } else {
                tok[nr] = id;
                sq[nr] = seqs[r];
                lrows[nr] = nr;
                row_of[nr] = r;
                nr++;
            }
        }
        if (nr == 0) break;
        /* the layout [L][nr][K] moves with nr: dense layers' entries must read −1 afresh */
        memset(rt, 0xff, (size_t)L * nr * K * sizeof(int32_t));
        mt_decode_batch b = {.n_rows = nr, .tokens = tok, .seq = sq, .adapters = &ad, .n_slots = 1,
                             .logit_rows = lrows, .n_logits = nr, .route_out = cfg->n_experts > 0 ? rt : NULL};
        st = mt_decode_step(dec, pool, &b, logits, err);
        for (int j = 0; st == MT_OK && j < nr; j++) {
            int r = row_of[j], pos = ro->P[r] + ro->C[r] - 1;
            memcpy(cur + (size_t)r * V, logits + (size_t)j * V, (size_t)V * sizeof(float));
            for (int l = 0; l < L && cfg->n_experts > 0; l++)
                memcpy(ro->routes + (((size_t)r * T + pos) * L + l) * K, rt + ((size_t)l * nr + j) * K,
                       (size_t)K * sizeof(int32_t));
        }
    }
    mt_decoder_free(dec);
    mt_kv_pool_free(pool);
    free(tok);
    free(sq);
    free(lrows);
    free(rt);
    free(row_of);
    free(seqs);
    free(logits);
    free(cur);
    free(live);
    free(rng);
    if (st != MT_OK) mt_rollout_free(ro);
    return st;
}

/* ---- rewards ---- */

/* Fills micro-batch rows from rollout rows r0 .. r0+k: tokens prompt + completion minus its
 * last token, targets the completion (the mask), and with routes the replay array. full: the
 * whole sequence as input (the reward model reads the last completion token that is not EOS). */
static void fill(const mt_run *run, mt_rl_env *g, const mt_rollout *ro, int r0, int k, bool full, bool routes) {
    int T = g->T, B = g->buf.B;
    int32_t pad = mt_tokenizer_eos_id(run->tok) >= 0 ? mt_tokenizer_eos_id(run->tok) : 0;
    for (size_t i = 0; i < (size_t)B * T; i++) {
        g->buf.tokens[i] = pad;
        g->buf.targets[i] = MT_IGNORE_INDEX;
        g->buf.pos[i] = (int32_t)(i % (size_t)T);
        g->buf.kv_start[i] = 0;
        g->mask[i] = 0;
    }
    size_t per_pos = (size_t)ro->L * ro->K;
    if (routes) memset(g->route_in, 0xff, (size_t)ro->L * B * T * ro->K * sizeof(int32_t));
    for (int b = 0; b < k; b++) {
        int r = r0 + b, P = ro->P[r], C = ro->C[r];
        const int32_t *s = ro->seq + (size_t)r * T;
        int len = full ? P + C - (ro->eos[r] ? 1 : 0) : P + C - 1;
        for (int t = 0; t < len; t++) g->buf.tokens[(size_t)b * T + t] = s[t];
        if (full) continue;
        for (int t = P - 1; t < P + C - 1; t++) {
            g->buf.targets[(size_t)b * T + t] = s[t + 1];
            g->mask[(size_t)b * T + t] = 1;
        }
        for (int t = 0; routes && t < len; t++)
            for (int l = 0; l < ro->L; l++)
                memcpy(g->route_in + ((size_t)l * B * T + (size_t)b * T + t) * ro->K,
                       ro->routes + ((size_t)r * T + t) * per_pos + (size_t)l * ro->K, (size_t)ro->K * sizeof(int32_t));
    }
}

/* Every completion's reward per function (rules on the decoded text against the prompt's
 * answer, the reward model's score at the last completion token) and combined. */
mt_status mt_rl_score(mt_run *run, mt_rl_env *g, const mt_rl_prompts *ps, mt_rollout *ro, mt_error *err) {
    int F = g->F, T = g->T, B = g->buf.B, fo = g->rm_lora ? 1 : 0;
    const mt_config *cfg = mt_model_config(run->model);
    int H = cfg->hidden_size, L = cfg->n_layers;
    double *per = mt_xcalloc((size_t)g->n_rules + 1, sizeof(double));
    mt_status st = MT_OK;
    for (int r = 0; r < ro->n && g->rules && st == MT_OK; r++) {
        int c = ro->C[r] - (ro->eos[r] ? 1 : 0);
        char *text = NULL;
        size_t len;
        st = mt_tokenizer_decode(run->tok, ro->seq + (size_t)r * T + ro->P[r], (size_t)c, true, &text, &len, err);
        double total;
        if (st == MT_OK)
            st = mt_reward_rules_score(g->rules, text, ps->p[ro->prompt_of[r]].answer, &total, per, err);
        for (int k = 0; st == MT_OK && k < g->n_rules; k++) ro->per_fn[(size_t)r * F + fo + k] = (float)per[k];
        free(text);
    }
    free(per);
    MT_TRY(st);
    for (int r0 = 0; g->rm_lora && r0 < ro->n; r0 += B) {
        int k = ro->n - r0 < B ? ro->n - r0 : B;
        fill(run, g, ro, r0, k, true, false);
        mt_batch batch = mt_batch_buf_view(&g->buf);
        batch.targets = NULL;
        mt_forward_opts fopt = {.adapter = mt_lora_adapter(g->rm_lora)};
        MT_TRY(mt_model_forward(run->model, g->ews, &batch, &fopt, NULL, err));
        const float *xf = mt_workspace_hidden(g->ews, L);
        for (int b = 0; b < k; b++) {
            int r = r0 + b, last = ro->P[r] + ro->C[r] - (ro->eos[r] ? 1 : 0) - 1;
            const float *h = xf + ((size_t)b * T + (size_t)last) * H;
            double s = 0;
            for (int j = 0; j < H; j++) s += (double)g->rm_head[j] * h[j];
            ro->per_fn[(size_t)r * F] = (float)s;
        }
    }
    mt_grpo_combine_rewards((size_t)ro->n, (size_t)F, ro->per_fn, g->weights, ro->reward);
    return MT_OK;
}

void mt_rl_fill_rows(const mt_run *run, mt_rl_env *e, const mt_rollout *ro, int r0, int k, bool routes) {
    fill(run, e, ro, r0, k, false, routes);
}

mt_status mt_rl_logps(mt_run *run, mt_rl_env *g, const mt_rollout *ro, const mt_adapter *adapter, bool replay,
                      const float *head, float *logp, float *values, mt_error *err) {
    int T = g->T, B = g->buf.B;
    const mt_config *cfg = mt_model_config(run->model);
    int H = cfg->hidden_size;
    for (int r0 = 0; r0 < ro->n; r0 += B) {
        int k = ro->n - r0 < B ? ro->n - r0 : B;
        fill(run, g, ro, r0, k, false, g->moe && replay);
        mt_batch batch = mt_batch_buf_view(&g->buf);
        mt_forward_opts fopt = {.adapter = adapter, .temperature = g->sample.temperature,
                                .route_in = g->moe && replay ? g->route_in : NULL};
        mt_forward_result fr;
        MT_TRY(mt_model_forward(run->model, g->ews, &batch, &fopt, &fr, err));
        const float *xf = values ? mt_workspace_hidden(g->ews, cfg->n_layers) : NULL;
        for (size_t i = 0; i < (size_t)k * T; i++) {
            size_t o = (size_t)r0 * T + i;
            logp[o] = g->mask[i] ? -fr.token_loss[i] : 0.0f;
            if (!values) continue;
            double s = 0;
            for (int j = 0; g->mask[i] && j < H; j++) s += (double)head[j] * xf[i * H + j];
            values[o] = (float)s;
        }
    }
    return MT_OK;
}

/* ---- setup ---- */

static mt_status open_rules(mt_run *run, mt_rl_env *g, mt_error *err) {
    const mt_recipe *r = run->r;
    size_t n = r->reward.rules.n;
    g->n_rules = (int)n;
    if (n) {
        mt_reward_rule *rules = mt_xcalloc(n, sizeof *rules);
        mt_status st = MT_OK;
        for (size_t i = 0; i < n && st == MT_OK; i++) {
            char why[256];
            if (!mt_reward_rule_spec_parse(r->reward.rules.items[i], &rules[i], why, sizeof why))
                st = mt_error_set(err, MT_ERR_INVALID, "reward.rules[%zu]: %s", i, why);
            rules[i].weight = 1.0; /* each rule is its own reward function; reward.weights combine them */
        }
        if (st == MT_OK) st = mt_reward_rules_compile(rules, n, &g->rules, err);
        free(rules);
        MT_TRY(st);
    }
    g->F = (r->reward.model ? 1 : 0) + g->n_rules;
    g->weights = mt_xcalloc((size_t)g->F, sizeof(double));
    g->fn_names = mt_xcalloc((size_t)g->F, sizeof *g->fn_names);
    for (int f = 0; f < g->F; f++) g->weights[f] = r->reward.weights.n ? r->reward.weights.values[f] : 1.0;
    int fo = 0;
    if (r->reward.model) snprintf(g->fn_names[fo++], sizeof g->fn_names[0], "rewards/reward_model/mean");
    for (int k = 0; k < g->n_rules; k++)
        snprintf(g->fn_names[fo + k], sizeof g->fn_names[0], "rewards/%s/mean", mt_reward_rules_name(g->rules, (size_t)k));
    return MT_OK;
}

static bool rules_need_answer(const mt_recipe *r) {
    for (size_t i = 0; i < r->reward.rules.n; i++) {
        mt_reward_rule rule;
        char why[256];
        if (mt_reward_rule_spec_parse(r->reward.rules.items[i], &rule, why, sizeof why) &&
            (rule.kind == MT_RULE_EXACT || rule.kind == MT_RULE_CONTAINS) && !rule.target)
            return true;
    }
    return false;
}

mt_status mt_rl_open_data(mt_run *run, mt_rl_env *g, int G, mt_error *err) {
    const mt_recipe *r = run->r;
    run->T = r->data.max_seq_len;
    g->T = run->T;
    g->G = G;
    g->max_new = r->rollout.max_new_tokens;
    if (g->max_new >= g->T)
        return mt_error_set(err, MT_ERR_INVALID,
                            "rollout.max_new_tokens: %d leaves no room for a prompt in data.max_seq_len %d", g->max_new,
                            g->T);
    int max_prompt = g->T - g->max_new;
    if (r->data.max_prompt_len != MT_RECIPE_UNSET && r->data.max_prompt_len < max_prompt)
        max_prompt = r->data.max_prompt_len;
    MT_TRY(load_prompts(run, &r->data.train, r->data.eval_split > 0 ? 0 : -1, r->data.eval_split, max_prompt,
                        &g->train, err));
    if (r->data.eval.n)
        MT_TRY(load_prompts(run, &r->data.eval, -1, 0, max_prompt, &g->eval, err));
    else if (r->data.eval_split > 0)
        MT_TRY(load_prompts(run, &r->data.train, 1, r->data.eval_split, max_prompt, &g->eval, err));
    if (g->train.n == 0) return mt_error_set(err, MT_ERR_INVALID, "data.train: no prompts");
    if (rules_need_answer(r)) {
        const mt_rl_prompts *sets[2] = {&g->train, &g->eval};
        for (int k = 0; k < 2; k++)
            for (int64_t i = 0; i < sets[k]->n; i++)
                if (!sets[k]->p[i].answer)
                    return mt_error_set(err, MT_ERR_INVALID,
                                        "reward.rules: a rule compares with the prompt's answer, and %s prompt %lld "
                                        "has none (give \"answer\" on every line)",
                                        k ? "held-out" : "training", (long long)i + 1);
    }
    mt_run_note(run->opts, "prompts: %lld train, %lld held out; %lld cut to their last %d tokens; %d completions each",
                (long long)g->train.n, (long long)g->eval.n, (long long)(g->train.n_truncated + g->eval.n_truncated),
                max_prompt, g->G);
    /* the thresholds read rows with targets: the prompts, as one-token-target rows */
    mt_rows *rows = &run->train_rows;
    int64_t n = g->train.n;
    rows->T = g->T;
    rows->n_rows = n;
    rows->tokens = mt_xcalloc((size_t)n * g->T, sizeof(int32_t));
    rows->targets = mt_xcalloc((size_t)n * g->T, sizeof(int32_t));
    rows->pos = mt_xcalloc((size_t)n * g->T, sizeof(int32_t));
    rows->kv_start = mt_xcalloc((size_t)n * g->T, sizeof(int32_t));
    rows->n_targets = mt_xcalloc((size_t)n, sizeof(int32_t));
    for (int64_t i = 0; i < n; i++) {
        const mt_rl_prompt *p = &g->train.p[i];
        for (int t = 0; t < g->T; t++) {
            size_t o = (size_t)i * g->T + t;
            rows->tokens[o] = t < p->n ? p->ids[t] : 0;
            rows->targets[o] = t + 1 < p->n ? p->ids[t + 1] : MT_IGNORE_INDEX;
            rows->pos[o] = t;
        }
        rows->n_targets[i] = p->n - 1;
    }
    run->n_examples = n;
    return MT_OK;
}

static mt_status load_frozen(mt_run *run, const char *dir, const char *what, mt_lora **out, float **head, int *max_rank,
                             mt_error *err) {
    mt_lora_meta meta = {0};
    mt_status st = mt_lora_load_peft(out, run->model, dir, &meta, err);
    free(meta.thresholds_json);
    if (st != MT_OK) {
        mt_error_prefix(err, "%s: ", what);
        free(meta.score);
        return st;
    }
    if (meta.base_hash[0] && strcmp(meta.base_hash, run->base_hash) != 0) {
        free(meta.score);
        return mt_error_set(err, MT_ERR_INVALID, "%s: %s was trained on another base", what, dir);
    }
    if (head) {
        int H = mt_model_config(run->model)->hidden_size;
        if (!meta.score || meta.score_rows != 1 || meta.score_cols != H) {
            free(meta.score);
            return mt_error_set(err, MT_ERR_INVALID,
                                "%s: %s has no score head [1, %d]: export one with method: reward", what, dir, H);
        }
        *head = meta.score;
    } else {
        free(meta.score);
    }
    int rr = mt_lora_max_rank(*out);
    if (rr > *max_rank) *max_rank = rr;
    return MT_OK;
}

mt_status mt_rl_open_model(mt_run *run, mt_rl_env *g, bool need_ref, mt_error *err) {
    const mt_recipe *r = run->r;
    const mt_config *cfg = mt_model_config(run->model);
    g->moe = cfg->n_experts > 0;
    if (g->moe && mt_backend_get_kind(run->be) != MT_BACKEND_CPU)
        return mt_error_set(err, MT_ERR_UNSUPPORTED, "%s records and replays routing on the CPU backend only",
                            mt_recipe_method_name(r->method));
    MT_TRY(open_rules(run, g, err));
    g->sample = (mt_sample_opts){.temperature = (float)r->rollout.temperature,
                                 .top_k = r->rollout.top_k,
                                 .top_p = (float)r->rollout.top_p};
    int max_rank = run->lora ? mt_lora_max_rank(run->lora) : 0;
    if (r->reward.model) {
        MT_TRY(load_frozen(run, r->reward.model, "reward.model", &g->rm_lora, &g->rm_head, &max_rank, err));
        mt_run_note(run->opts, "reward model: %s", r->reward.model);
    }
    if (need_ref && r->reference.model == MT_RECIPE_REF_ADAPTER)
        MT_TRY(load_frozen(run, r->reference.adapter, "reference.adapter", &g->ref_lora, NULL, &max_rank, err));
    int B = r->train.micro_batch * g->G, T = g->T;
    MT_TRY(mt_run_train_workspace(run, B, T, max_rank, err));
    MT_TRY(mt_workspace_init(&g->ews, run->model, B, T, false, max_rank, err));
    mt_batch_buf_init(&g->buf, B, T);
    size_t n = (size_t)B * T;
    g->mask = mt_xcalloc(n, 1);
    size_t nr = (size_t)cfg->n_layers * n * (g->moe ? cfg->top_k : 1);
    g->route_in = mt_xcalloc(nr, sizeof(int32_t));
    g->route_out = mt_xcalloc(nr, sizeof(int32_t));
    return MT_OK;
}

void mt_rl_close(mt_rl_env *g) {
    prompts_free(&g->train);
    prompts_free(&g->eval);
    mt_reward_rules_free(g->rules);
    free(g->weights);
    free(g->fn_names);
    mt_lora_free(g->rm_lora);
    mt_lora_free(g->ref_lora);
    free(g->rm_head);
    mt_workspace_free(g->ews);
    mt_batch_buf_free(&g->buf);
    free(g->mask);
    free(g->route_in);
    free(g->route_out);
    memset(g, 0, sizeof *g);
}

/* ---- the training side of a step ---- */

mt_status mt_rl_train_forward(mt_run *run, mt_rl_env *e, const mt_rollout *ro, int r0, int pass, bool count,
                              float *logp, mt_forward_result *fr, int64_t *tokens, int64_t *differ, mt_error *err) {
    int B = e->buf.B;
    mt_rl_fill_rows(run, e, ro, r0, B, e->moe);
    mt_batch batch = mt_batch_buf_view(&e->buf);
    mt_forward_opts fo = mt_run_forward_opts(run, pass);
    fo.temperature = e->sample.temperature;
    if (e->moe) {
        fo.route_in = e->route_in;
        fo.route_out = e->route_out;
    }
    MT_TRY(mt_model_forward(run->model, run->ws, &batch, &fo, fr, err));
    if (e->moe && count) mt_rl_count_mismatch(run, e, B, tokens, differ);
    for (size_t i = 0; i < (size_t)B * e->T; i++) logp[i] = e->mask[i] ? -fr->token_loss[i] : 0.0f;
    return MT_OK;
}

mt_status mt_rl_last_update(mt_run *run, const mt_rl_env *e, const mt_rollout *ro, const mt_obj_metrics *rollout_m,
                            int64_t mm_tokens, int64_t mm_differ, double loss, double aux, mt_step_out *so,
                            mt_error *err) {
    for (int i = 0; i < rollout_m->n; i++) mt_obj_metric(&so->metrics, rollout_m->m[i].name, rollout_m->m[i].value);
    if (e->moe) {
        double mm[2] = {(double)mm_differ, (double)mm_tokens};
        MT_TRY(mt_run_dist_sum(run, mm, 2, err));
        mt_rl_metric_global(run, &so->metrics, "routing/mismatch", mm[1] ? mm[0] / mm[1] : 0.0);
    }
    so->aux = aux;
    int64_t toks = 0;
    for (int i = 0; i < ro->n; i++) toks += ro->P[i] + ro->C[i];
    so->n_tokens = toks;
    so->loss = loss;
    mt_run_update(run, so->loss, so);
    return MT_OK;
}

/* ---- measures ---- */

/* Share of completion tokens whose set of experts differs, in any MoE layer, between the
 * rollout (rec, the replay array) and this pass (out). */
void mt_rl_count_mismatch(const mt_run *run, const mt_rl_env *g, int rows, int64_t *tokens, int64_t *differ) {
    const mt_config *cfg = mt_model_config(run->model);
    int K = cfg->top_k, T = g->T, L = cfg->n_layers;
    size_t BT = (size_t)g->buf.B * T;
    for (int b = 0; b < rows; b++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (!g->mask[i]) continue;
            bool d = false;
            for (int l = 0; l < L && !d; l++) {
                const int32_t *a = g->route_in + ((size_t)l * BT + i) * K, *o = g->route_out + ((size_t)l * BT + i) * K;
                if (a[0] < 0) continue;
                for (int x = 0; x < K && !d; x++) {
                    bool found = false;
                    for (int y = 0; y < K; y++) found |= a[x] == o[y];
                    d = !found;
                }
            }
            (*tokens)++;
            *differ += d;
        }
}

static void metric_mean(mt_obj_metrics *ms, const char *name, const double *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    mt_obj_metric(ms, name, n ? s / n : NAN);
}

void mt_rl_metric_global(const mt_run *run, mt_obj_metrics *ms, const char *name, double v) {
    mt_obj_metric(ms, name, run->rank == 0 || !isfinite(v) ? v : 0.0);
}

/* The step's rollout metrics under TRL's names, over every rank's share of the rollout: the
 * means from sums over ranks (rank 0 carries them), the extremes each rank's own (the update
 * takes the extreme over ranks). */
mt_status mt_rl_rollout_metrics(mt_run *run, const mt_rl_env *g, const mt_rollout *ro, mt_obj_metrics *ms,
                                mt_error *err) {
    enum { LEN, CLIPPED, ENT, ENT_TOK, N, FN }; /* then per reward function: sum, count */
    double *s = mt_xcalloc((size_t)FN + 2 * (size_t)g->F, sizeof(double));
    double mn = INFINITY, mx = 0;
    for (int r = 0; r < ro->n; r++) {
        s[LEN] += ro->C[r];
        mn = ro->C[r] < mn ? ro->C[r] : mn;
        mx = ro->C[r] > mx ? ro->C[r] : mx;
        s[CLIPPED] += !ro->eos[r];
        s[ENT] += ro->entropy[r];
        s[ENT_TOK] += ro->C[r];
    }
    s[N] = ro->n;
    for (int f = 0; f < g->F; f++)
        for (int r = 0; r < ro->n; r++)
            if (isfinite(ro->per_fn[(size_t)r * g->F + f])) {
                s[FN + 2 * f] += ro->per_fn[(size_t)r * g->F + f];
                s[FN + 2 * f + 1]++;
            }
    mt_status st = mt_run_dist_sum(run, s, (size_t)FN + 2 * (size_t)g->F, err);
    if (st == MT_OK) {
        mt_rl_metric_global(run, ms, "completions/mean_length", s[LEN] / s[N]);
        mt_obj_metric(ms, "completions/min_length", mn);
        mt_obj_metric(ms, "completions/max_length", mx);
        mt_rl_metric_global(run, ms, "completions/clipped_ratio", s[CLIPPED] / s[N]);
        mt_rl_metric_global(run, ms, "entropy", s[ENT_TOK] > 0 ? s[ENT] / s[ENT_TOK] : NAN);
        for (int f = 0; f < g->F; f++)
            mt_rl_metric_global(run, ms, g->fn_names[f], s[FN + 2 * f + 1] > 0 ? s[FN + 2 * f] / s[FN + 2 * f + 1] : NAN);
    }
    free(s);
    return st;
}

/* Held-out prompts: one completion each, sampled with a fixed stream so that evaluations of
 * different steps (and runs) compare; the mean reward is eval_reward. */
mt_status mt_rl_eval(mt_run *run, mt_rl_env *g, mt_eval_out *eo, mt_error *err) {
    if (g->eval.n == 0) return MT_OK;
    int B = g->buf.B;
    int64_t n = g->eval.n;
    double *rw = mt_xcalloc((size_t)n, sizeof(double)), *len = mt_xcalloc((size_t)n, sizeof(double));
    double **per = mt_xcalloc((size_t)g->F, sizeof *per);
    for (int f = 0; f < g->F; f++) per[f] = mt_xcalloc((size_t)n, sizeof(double));
    int64_t *pidx = mt_xcalloc((size_t)B, sizeof *pidx);
    int *np_f = mt_xcalloc((size_t)g->F, sizeof(int));
    int nr = 0;
    mt_status st = MT_OK;
    uint64_t seed = mt_hash_u64((uint64_t)run->r->train.seed, 0x6576616cULL);
    /* prompt i's stream is keyed by i alone: whatever the batch size, the same held-out
     * completion is sampled from the same policy (runs of different methods compare at step 0) */
    int *slot = mt_xcalloc((size_t)B, sizeof(int));
    for (int64_t i0 = 0; i0 < n && st == MT_OK; i0 += B) {
        int k = (int)(n - i0 < B ? n - i0 : B);
        for (int b = 0; b < k; b++) {
            pidx[b] = i0 + b;
            slot[b] = (int)(i0 + b);
        }
        mt_rollout ro;
        st = mt_rl_sample(run, g, &g->eval, pidx, slot, k, 1, seed, &ro, err);
        if (st == MT_OK) st = mt_rl_score(run, g, &g->eval, &ro, err);
        for (int b = 0; st == MT_OK && b < k; b++) {
            if (isfinite(ro.reward[b])) rw[nr++] = ro.reward[b];
            len[i0 + b] = ro.C[b];
            for (int f = 0; f < g->F; f++)
                if (isfinite(ro.per_fn[(size_t)b * g->F + f])) per[f][np_f[f]++] = ro.per_fn[(size_t)b * g->F + f];
        }
        if (st == MT_OK) mt_rollout_free(&ro);
    }
    if (st == MT_OK) {
        metric_mean(&eo->metrics, "reward", rw, nr);
        for (int f = 0; f < g->F; f++) metric_mean(&eo->metrics, g->fn_names[f], per[f], np_f[f]);
        metric_mean(&eo->metrics, "completions/mean_length", len, (int)n);
    }
    for (int f = 0; f < g->F; f++) free(per[f]);
    free(per);
    free(np_f);
    free(rw);
    free(len);
    free(pidx);
    free(slot);
    return st;
}

