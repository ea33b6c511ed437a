/* export.c — what a run leaves behind: a PEFT adapter (or, for full fine-tuning, a Hugging
 * Face model) with moetune's metadata, its row in the store, and merged-model export. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peft/lora.h"
#include "objective-impl.h"
#include "store/store.h"

/* moetune.json beside a full model: the same metadata an adapter carries. */
static mt_status write_model_meta(const char *dir, const mt_run *run, mt_error *err) {
    char *base = mt_json_quote(run->r->model.path);
    char text[8192];
    int n = snprintf(text, sizeof text,
                     "{\n  \"moetune_version\": \"%s\",\n  \"kind\": \"full\",\n  \"base_model\": %s,\n"
                     "  \"base_hash\": \"%s\",\n  \"run_id\": %lld,\n  \"thresholds\": %s\n}\n",
                     MT_VERSION, base, run->base_hash, (long long)run->run_id, run->thresholds_json);
    free(base);
    char path[4200];
    snprintf(path, sizeof path, "%s/moetune.json", dir);
    return mt_write_file_atomic(path, text, (size_t)n, err);
}

static char *targets_json(const mt_recipe *r) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < r->adapter.targets.n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(r->adapter.targets.items[i]));
    char *s = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    return s;
}

mt_status mt_run_export(mt_run *run, mt_train_result *res, mt_error *err) {
    const mt_recipe *r = run->r;
    const char *dir = r->output.adapter;
    MT_TRY(mt_mkdirs(dir, err));
    if (run->lora) {
        mt_lora_meta meta = {.run_id = run->run_id, .thresholds_json = run->thresholds_json};
        if (run->obj->head) MT_TRY(run->obj->head(run, &meta.score, &meta.score_rows, &meta.score_cols));
        snprintf(meta.base_model, sizeof meta.base_model, "%s", r->model.path);
        memcpy(meta.base_hash, run->base_hash, sizeof meta.base_hash);
        MT_TRY(mt_lora_save_peft(run->lora, dir, &meta, err));
    } else {
        MT_TRY(mt_model_save(run->model, dir, MT_DTYPE_F32, 0, err));
        MT_TRY(mt_copy_tokenizer_files(r->model.tokenizer, dir, err));
        MT_TRY(write_model_meta(dir, run, err));
    }
    snprintf(res->adapter_dir, sizeof res->adapter_dir, "%s", dir);
    if (!run->store) return MT_OK;
    if (!run->lora) { /* a full model is not an adapter: the export event records it */
        char *q = mt_json_quote(dir);
        char detail[4400];
        snprintf(detail, sizeof detail, "{\"path\":%s,\"kind\":\"full\"}", q);
        free(q);
        return mt_store_log_event(run->store, run->run_id, run->st.step, "export", detail, err);
    }
    char eval[256] = "null";
    if (isfinite(res->eval_loss) && isfinite(res->eval_ppl))
        snprintf(eval, sizeof eval, "{\"eval_loss\":%.17g,\"eval_ppl\":%.17g,\"eval_tokens\":%lld}", res->eval_loss,
                 res->eval_ppl, (long long)res->eval_tokens);
    else if (isfinite(res->eval_loss)) /* a preference or reward loss has no perplexity */
        snprintf(eval, sizeof eval, "{\"eval_loss\":%.17g}", res->eval_loss);
    char *targets = run->lora ? targets_json(r) : NULL;
    mt_store_adapter_info info = {.path = dir,
                                  .run_id = run->run_id,
                                  .base_hash = run->base_hash,
                                  .rank = run->lora ? mt_lora_max_rank(run->lora) : 0,
                                  .alpha = run->lora ? r->adapter.alpha : 0,
                                  .targets_json = targets,
                                  .thresholds_json = run->thresholds_json,
                                  .eval_json = isfinite(res->eval_loss) ? eval : NULL};
    int64_t id;
    mt_status st = mt_store_adapter_add(run->store, &info, &id, err);
    free(targets);
    MT_TRY(st);
    char *q = mt_json_quote(dir);
    char detail[4400];
    snprintf(detail, sizeof detail, "{\"path\":%s,\"kind\":\"%s\"}", q, run->lora ? "lora" : "full");
    free(q);
    return mt_store_log_event(run->store, run->run_id, run->st.step, "export", detail, err);
}

/* The dtype the base's linear weights are stored in (a bf16 checkpoint stays bf16 merged). */
static mt_dtype base_dtype(const mt_model *m) {
    for (int i = 0; i < mt_model_param_count(m); i++) {
        mt_dtype d = mt_model_param((mt_model *)m, i)->dtype;
        if (d == MT_DTYPE_BF16 || d == MT_DTYPE_F16) return d;
    }
    return MT_DTYPE_F32;
}

mt_status mt_export_merged(const char *adapter_dir, const char *base_dir, const char *out_dir, int threads,
                           mt_export_dtype want, mt_error *err) {
    if ((unsigned)want > MT_EXPORT_F16) return mt_error_set(err, MT_ERR_INVALID, "export: unknown dtype %d", (int)want);
    /* The base is read before anything is written: a bad adapter leaves out_dir untouched. */
    mt_lora_meta meta;
    memset(&meta, 0, sizeof meta);
    char meta_path[4200];
    snprintf(meta_path, sizeof meta_path, "%s/moetune.json", adapter_dir);
    if (!base_dir) {
        char cfg_path[4200];
        snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", adapter_dir);
        char *text;
        MT_TRY(mt_read_file(cfg_path, &text, NULL, err));
        cJSON *j = cJSON_Parse(text);
        free(text);
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "base_model_name_or_path");
        if (cJSON_IsString(b) && b->valuestring[0]) snprintf(meta.base_model, sizeof meta.base_model, "%s", b->valuestring);
        cJSON_Delete(j);
        if (!meta.base_model[0])
            return mt_error_set(err, MT_ERR_INVALID,
                                "%s: base_model_name_or_path is empty; name the base with --model", cfg_path);
        base_dir = meta.base_model;
    }
    char base[4096];
    snprintf(base, sizeof base, "%s", base_dir);
    mt_backend *be;
    MT_TRY(mt_backend_init(&be, MT_BACKEND_CPU, threads, err));
    mt_model *m = NULL;
    mt_lora *l = NULL;
    mt_lora_meta got;
    memset(&got, 0, sizeof got);
    mt_status st = mt_model_load(&m, base, be, err);
    if (st == MT_OK) st = mt_lora_load_peft(&l, m, adapter_dir, &got, err);
    if (st == MT_OK && got.base_hash[0]) {
        char hash[65];
        mt_model_content_hash(m, hash);
        if (strcmp(hash, got.base_hash) != 0)
            st = mt_error_set(err, MT_ERR_INVALID,
                              "%s: trained on a base with content hash %.12s..., but %s hashes to %.12s...: "
                              "merging onto another base gives a different model",
                              adapter_dir, got.base_hash, base, hash);
    }
    static const mt_dtype as[] = {MT_DTYPE_F32, MT_DTYPE_F32, MT_DTYPE_BF16, MT_DTYPE_F16};
    mt_dtype dtype = as[want];
    if (st == MT_OK && want == MT_EXPORT_AUTO) dtype = base_dtype(m);
    if (st == MT_OK) st = mt_lora_merge(l, err);
    if (st == MT_OK) st = mt_mkdirs(out_dir, err);
    if (st == MT_OK) st = mt_model_save(m, out_dir, dtype, 0, err);
    char tok_json[4200];
    snprintf(tok_json, sizeof tok_json, "%s/tokenizer.json", base);
    if (st == MT_OK && mt_path_exists(tok_json)) st = mt_copy_tokenizer_files(base, out_dir, err);
    free(got.thresholds_json);
    mt_lora_free(l);
    mt_model_free(m);
    mt_backend_free(be);
    return st;
}
