/* checkpoint.c — atomic training checkpoints: a folder written under a temporary name, every
 * file fsynced, then renamed into place, so that kill -9 at any instant loses at most the
 * checkpoint being written and resume always finds a complete one. */
#define _GNU_SOURCE
#include "checkpoint-impl.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"

#define STEP_PREFIX "step-"

static mt_status remove_tree(const char *path, mt_error *err) {
    int fe = mt_fault_io(MT_FAULT_REMOVE, path);
    if (fe) return mt_error_set(err, MT_ERR_IO, "%s: cannot remove: %s", path, strerror(fe));
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[4096];
            mt_path_join(sub, sizeof sub, path, e->d_name);
            if (unlink(sub) != 0 && errno != ENOENT) {
                closedir(d);
                return mt_error_set(err, MT_ERR_IO, "%s: cannot remove: %s", sub, strerror(errno));
            }
        }
        closedir(d);
    }
    if (rmdir(path) != 0 && errno != ENOENT)
        return mt_error_set(err, MT_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
    return MT_OK;
}

/* trainer_state.json, printed directly: every field is a number or a hex string, so there is
 * nothing to escape, and a document built through an allocating JSON tree could silently lose a
 * field when an allocation fails (found by test_faults) and still be written as complete.
 * %.17g round-trips a double exactly. NULL when out of memory. */
#define STATE_JSON                                                                                          \
    "{\n\t\"step\":\t%lld,\n\t\"optim_step\":\t%lld,\n\t\"epoch\":\t%lld,\n\t\"cursor\":\t%lld,\n"           \
    "\t\"tokens_seen\":\t%lld,\n\t\"nan_streak\":\t%lld,\n\t\"run_id\":\t%lld,\n"                             \
    "\t\"threads\":\t%d,\n\t\"ranks\":\t%d,\n\t\"dap_threshold\":\t%.17g,\n"                                    \
    "\t\"mean_entropy\":\t%.17g,\n\t\"recipe_sha256\":\t\"%.64s\",\n\t\"moetune_version\":\t\"%s\"\n}"
#define STATE_ARGS(s)                                                                                       \
    (long long)(s)->step, (long long)(s)->optim_step, (long long)(s)->epoch, (long long)(s)->cursor,        \
        (long long)(s)->tokens_seen, (long long)(s)->nan_streak, (long long)(s)->run_id, (s)->threads,      \
        (s)->ranks, (s)->dap_threshold, (s)->mean_entropy, (s)->recipe_sha256, MT_VERSION

static char *state_json(const mt_ckpt_state *s) {
    int n = snprintf(NULL, 0, STATE_JSON, STATE_ARGS(s));
    char *text = n > 0 ? mt_malloc((size_t)n + 1) : NULL;
    if (text) snprintf(text, (size_t)n + 1, STATE_JSON, STATE_ARGS(s));
    return text;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* Complete checkpoint folders (step-NNNNNNNN, no temporary suffix), oldest first. Out of
 * memory is an error, not a shorter list: --resume must never pick an older checkpoint
 * because a newer one went unlisted. */
static mt_status list_checkpoints(const char *root, char ***out, size_t *count, mt_error *err) {
    *out = NULL;
    *count = 0;
    DIR *d = opendir(root);
    if (!d) return MT_OK;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, STEP_PREFIX, 5) != 0 || l != 13) continue;
        bool digits = true;
        for (size_t i = 5; i < l; i++) digits = digits && e->d_name[i] >= '0' && e->d_name[i] <= '9';
        if (!digits) continue;
        char *name = mt_strdup(e->d_name);
        if (name && n == cap) {
            char **grown = mt_realloc(*out, (cap ? cap * 2 : 16) * sizeof **out);
            if (grown) {
                *out = grown;
                cap = cap ? cap * 2 : 16;
            }
        }
        if (!name || n == cap) {
            free(name);
            closedir(d);
            free_names(*out, n);
            *out = NULL;
            return mt_error_set(err, MT_ERR_NOMEM, "%s: out of memory listing checkpoints", root);
        }
        (*out)[n++] = name;
    }
    closedir(d);
    if (n) qsort(*out, n, sizeof **out, cmp_str);
    *count = n;
    return MT_OK;
}

/* Deletes a checkpoint folder so that no moment of it is visible as a checkpoint: renamed to
 * a temporary name first, then emptied. Deleting in place left, when killed part-way, a
 * step-NNNNNNNN folder with some of its files gone (found by scripts/crash-soak.sh, point 296
 * of 300). A kill after the rename leaves a temporary folder the next save removes. */
static void discard_checkpoint(const char *path) {
    char gone[4300];
    snprintf(gone, sizeof gone, "%s.tmp-rm-%ld", path, (long)getpid());
    if (mt_fault_rename(path, gone) == 0) remove_tree(gone, NULL);
}

/* Temporary folders a killed save or deletion left behind (step-NNNNNNNN.tmp-PID,
 * step-NNNNNNNN.tmp-rm-PID): never a checkpoint, so --resume ignores them; the next save of the
 * run removes them. */
static void remove_stale_temporaries(const char *root) {
    DIR *d = opendir(root);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, STEP_PREFIX, 5) != 0 || !strstr(e->d_name, ".tmp-")) continue;
        char sub[4300];
        snprintf(sub, sizeof sub, "%s/%s", root, e->d_name);
        remove_tree(sub, NULL);
    }
    closedir(d);
}

mt_status mt_ckpt_save(const char *dir, const mt_optim *o, const mt_ckpt_state *s, int keep, char *saved_path,
                       size_t cap, mt_error *err) {
    char root[4096], final[4096], tmp[4200], path[4300];
    snprintf(root, sizeof root, "%s/checkpoints", dir);
    snprintf(final, sizeof final, "%s/" STEP_PREFIX "%08lld", root, (long long)s->step);
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", final, (long)getpid());
    mt_status st = mt_mkdirs(root, err);
    if (st == MT_OK) {
        remove_stale_temporaries(root);
        st = mt_mkdirs(tmp, err);
    }
    if (st != MT_OK) return st;

    char (*names)[2][300] = mt_calloc((size_t)(o->n ? o->n : 1), sizeof *names);
    if (!names) {
        remove_tree(tmp, NULL);
        return mt_error_set(err, MT_ERR_NOMEM, "%s: out of memory writing a checkpoint", final);
    }
    mt_st_writer *w = mt_st_writer_init();
    for (int i = 0; i < o->n; i++) {
        const mt_trainable *t = &o->t[i];
        int64_t shape[1] = {t->numel};
        snprintf(names[i][0], sizeof names[i][0], "%s.adam_m", t->name);
        snprintf(names[i][1], sizeof names[i][1], "%s.adam_v", t->name);
        mt_st_writer_add(w, t->name, MT_DTYPE_F32, 1, shape, t->data);
        mt_st_writer_add(w, names[i][0], MT_DTYPE_F32, 1, shape, t->m);
        mt_st_writer_add(w, names[i][1], MT_DTYPE_F32, 1, shape, t->v);
    }
    snprintf(path, sizeof path, "%s/state.safetensors", tmp);
    st = mt_st_writer_save(w, path, err);
    mt_st_writer_free(w);
    free(names);
    if (st == MT_OK) {
        char *json = state_json(s);
        snprintf(path, sizeof path, "%s/trainer_state.json", tmp);
        st = json ? mt_write_file_atomic(path, json, strlen(json), err)
                  : mt_error_set(err, MT_ERR_NOMEM, "%s: out of memory", path);
        free(json);
    }
    if (st == MT_OK) st = mt_fsync_dir(tmp, err);
    if (st == MT_OK) {
        /* a checkpoint of the same step (an earlier attempt of a resumed run) is replaced */
        discard_checkpoint(final);
        if (mt_fault_rename(tmp, final) != 0)
            st = mt_error_set(err, MT_ERR_IO, "%s: rename failed: %s", final, strerror(errno));
    }
    if (st == MT_OK) st = mt_fsync_dir(root, err);
    if (st != MT_OK) {
        remove_tree(tmp, NULL);
        return st;
    }
    if (saved_path) snprintf(saved_path, cap, "%s", final);

    /* pruning old checkpoints is housekeeping: when listing fails, they stay until next time */
    char **names_on_disk;
    size_t n;
    if (keep > 0 && list_checkpoints(root, &names_on_disk, &n, NULL) == MT_OK) {
        for (size_t i = 0; i + (size_t)keep < n; i++) {
            char old[4200];
            snprintf(old, sizeof old, "%s/%s", root, names_on_disk[i]);
            discard_checkpoint(old);
        }
        free_names(names_on_disk, n);
    }
    return MT_OK;
}

mt_status mt_ckpt_find_latest(const char *dir, char *path, size_t cap, mt_error *err) {
    char root[4096];
    snprintf(root, sizeof root, "%s/checkpoints", dir);
    char **names;
    size_t n;
    mt_status st = list_checkpoints(root, &names, &n, err);
    if (st != MT_OK) return st;
    st = MT_ERR_NOT_FOUND;
    for (size_t i = n; i-- > 0;) {
        char probe[4300];
        snprintf(probe, sizeof probe, "%s/%s/trainer_state.json", root, names[i]);
        char probe2[4300];
        snprintf(probe2, sizeof probe2, "%s/%s/state.safetensors", root, names[i]);
        if (st != MT_OK && mt_path_exists(probe) && mt_path_exists(probe2)) {
            snprintf(path, cap, "%s/%s", root, names[i]);
            st = MT_OK;
        }
    }
    free_names(names, n);
    if (st != MT_OK) return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: no checkpoint to resume from", root);
    return MT_OK;
}

static bool json_int(const cJSON *o, const char *key, int64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) return false;
    *out = (int64_t)v->valuedouble;
    return true;
}

mt_status mt_ckpt_load(const char *path, mt_optim *o, mt_ckpt_state *s, mt_error *err) {
    char file[4300];
    snprintf(file, sizeof file, "%s/trainer_state.json", path);
    char *text = NULL;
    mt_status st = mt_read_file(file, &text, NULL, err);
    if (st != MT_OK) return st;
    cJSON *j = cJSON_Parse(text);
    free(text);
    memset(s, 0, sizeof *s);
    int64_t threads = 0;
    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(j, "recipe_sha256");
    const cJSON *dap = cJSON_GetObjectItemCaseSensitive(j, "dap_threshold");
    const cJSON *ent = cJSON_GetObjectItemCaseSensitive(j, "mean_entropy");
    bool ok = j && json_int(j, "step", &s->step) && json_int(j, "optim_step", &s->optim_step) &&
              json_int(j, "epoch", &s->epoch) && json_int(j, "cursor", &s->cursor) &&
              json_int(j, "tokens_seen", &s->tokens_seen) && json_int(j, "nan_streak", &s->nan_streak) &&
              json_int(j, "run_id", &s->run_id) && json_int(j, "threads", &threads) && cJSON_IsString(sha) &&
              strlen(sha->valuestring) == 64 && cJSON_IsNumber(dap) && cJSON_IsNumber(ent);
    int64_t ranks = 1;
    if (ok && !json_int(j, "ranks", &ranks)) ranks = 1;
    if (ok) {
        s->threads = (int)threads;
        s->ranks = ranks > 0 ? (int)ranks : 1;
        s->dap_threshold = dap->valuedouble;
        s->mean_entropy = ent->valuedouble;
        memcpy(s->recipe_sha256, sha->valuestring, 65);
    }
    cJSON_Delete(j);
    if (!ok) return mt_error_set(err, MT_ERR_FORMAT, "%s: missing or malformed fields", file);

    snprintf(file, sizeof file, "%s/state.safetensors", path);
    mt_safetensors *sf = NULL;
    st = mt_safetensors_open(&sf, file, err);
    if (st != MT_OK) return st;
    for (int i = 0; i < o->n && st == MT_OK; i++) {
        mt_trainable *t = &o->t[i];
        char name[300];
        float *dst[3] = {t->data, t->m, t->v};
        for (int k = 0; k < 3 && st == MT_OK; k++) {
            snprintf(name, sizeof name, k == 0 ? "%s" : k == 1 ? "%s.adam_m" : "%s.adam_v", t->name);
            const mt_st_tensor *x = mt_safetensors_find(sf, name);
            if (!x)
                st = mt_error_set(err, MT_ERR_FORMAT, "%s: tensor '%s' is missing (a different adapter or model?)",
                                  file, name);
            else if (x->dtype != MT_DTYPE_F32 || x->numel != t->numel)
                st = mt_error_set(err, MT_ERR_FORMAT, "%s: tensor '%s' has %lld values, this run has %lld", file,
                                  name, (long long)x->numel, (long long)t->numel);
            else
                mt_backend_upload(o->be, dst[k], x->data, (size_t)t->numel * sizeof(float));
        }
    }
    if (st == MT_OK && mt_safetensors_count(sf) != (size_t)o->n * 3)
        st = mt_error_set(err, MT_ERR_FORMAT, "%s: holds %zu tensors, this run trains %d (a different adapter?)", file,
                          mt_safetensors_count(sf) / 3, o->n);
    mt_safetensors_close(sf);
    if (st == MT_OK) o->step = s->optim_step;
    return st;
}
