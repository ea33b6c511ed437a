/* registry.c — named adapters for a server: each name has a current version; loading a name
 * again makes a new version while sequences that acquired the old one keep using it until
 * they release it (then it is freed). A cap on names evicts the least recently used. One
 * mutex guards the tables; reading a PEFT folder happens outside it, so a slow load never
 * blocks the decode loop's acquire/release. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora-impl.h"

typedef struct reg_version {
    mt_lora *lora;
    int64_t version;
    int refs;
    bool current;                /* still its name's current version */
    struct reg_version *next;    /* in the retired list while not current */
} reg_version;

typedef struct reg_entry {
    char name[256];
    char path[4096];
    reg_version *cur;            /* NULL: unloaded (the entry keeps the version counter) */
    int64_t last_version;
    uint64_t last_used;
    double load_seconds, loaded_at;
    char base_hash[65];
    char thresholds[512];
} reg_entry;

struct mt_registry {
    mt_model *m;
    char base_hash[65];
    int max_rank, max_loaded;
    pthread_mutex_t mu;
    reg_entry *entries;
    int n_entries, cap_entries;
    reg_version *retired;        /* replaced or unloaded versions some sequence still holds */
    uint64_t clock;              /* LRU: bumped by every acquire and load */
};

mt_status mt_registry_init(mt_registry **out, mt_model *m, const char base_hash[65], const mt_registry_opts *o,
                           mt_error *err) {
    *out = NULL;
    int max_rank = o && o->max_rank > 0 ? o->max_rank : MT_DEFAULT_MAX_RANK;
    int max_loaded = o ? o->max_loaded : 0;
    if (max_loaded < 0) return mt_error_set(err, MT_ERR_INVALID, "registry: max_loaded %d is negative", max_loaded);
    mt_registry *r = mt_xcalloc(1, sizeof *r);
    r->m = m;
    snprintf(r->base_hash, sizeof r->base_hash, "%s", base_hash ? base_hash : "");
    r->max_rank = max_rank;
    r->max_loaded = max_loaded;
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return MT_OK;
}

static void version_free(reg_version *v) {
    mt_lora_free(v->lora);
    free(v);
}

/* Takes a current version out of service: freed now if nobody holds it, else when the last
 * holder releases it. Called with the lock held. */
static void retire(mt_registry *r, reg_version *v) {
    v->current = false;
    if (v->refs == 0) {
        version_free(v);
        return;
    }
    v->next = r->retired;
    r->retired = v;
}

void mt_registry_free(mt_registry *r) {
    if (!r) return;
    for (int i = 0; i < r->n_entries; i++)
        if (r->entries[i].cur) {
            MT_ASSERT(r->entries[i].cur->refs == 0);
            version_free(r->entries[i].cur);
        }
    MT_ASSERT(r->retired == NULL); /* every acquired adapter must have been released */
    pthread_mutex_destroy(&r->mu);
    free(r->entries);
    free(r);
}

static reg_entry *find_entry(mt_registry *r, const char *name) {
    for (int i = 0; i < r->n_entries; i++)
        if (!strcmp(r->entries[i].name, name)) return &r->entries[i];
    return NULL;
}

static int loaded_count(const mt_registry *r) {
    int n = 0;
    for (int i = 0; i < r->n_entries; i++) n += r->entries[i].cur != NULL;
    return n;
}

/* Evicts least recently used names (never `keep`) until at most max_loaded are loaded. */
static void evict(mt_registry *r, const reg_entry *keep) {
    while (r->max_loaded > 0 && loaded_count(r) > r->max_loaded) {
        reg_entry *lru = NULL;
        for (int i = 0; i < r->n_entries; i++) {
            reg_entry *e = &r->entries[i];
            if (e->cur && e != keep && (!lru || e->last_used < lru->last_used)) lru = e;
        }
        if (!lru) return;
        retire(r, lru->cur);
        lru->cur = NULL;
    }
}

mt_status mt_registry_load(mt_registry *r, const char *name, const char *dir, int64_t *version, mt_error *err) {
    if (!name || !*name || strlen(name) >= sizeof r->entries[0].name)
        return mt_error_set(err, MT_ERR_INVALID, "registry: an adapter name must have 1 to %zu characters",
                            sizeof r->entries[0].name - 1);
    if (!dir || strlen(dir) >= sizeof r->entries[0].path)
        return mt_error_set(err, MT_ERR_INVALID, "registry: adapter path missing or too long");
    double t0 = mt_now_seconds();
    mt_lora *l = NULL;
    mt_lora_meta meta = {0};
    mt_status st = mt_lora_load_peft(&l, r->m, dir, &meta, err);
    if (st) {
        free(meta.thresholds_json);
        return st;
    }
    if (mt_lora_max_rank(l) > r->max_rank)
        st = mt_error_set(err, MT_ERR_INVALID, "%s: rank %d is above the %d this server allows (--max-lora-rank)", dir,
                          mt_lora_max_rank(l), r->max_rank);
    else if (meta.base_hash[0] && r->base_hash[0] && strcmp(meta.base_hash, r->base_hash) != 0)
        st = mt_error_set(err, MT_ERR_INVALID,
                          "%s: the adapter was trained on a base with content hash %s, but the loaded base is %s", dir,
                          meta.base_hash, r->base_hash);
    if (st) {
        mt_lora_free(l);
        free(meta.thresholds_json);
        return st;
    }
    double t1 = mt_now_seconds();
    reg_version *v = mt_xcalloc(1, sizeof *v);
    v->lora = l;
    v->current = true;

    pthread_mutex_lock(&r->mu);
    reg_entry *e = find_entry(r, name);
    if (!e) {
        if (r->n_entries == r->cap_entries) {
            r->cap_entries = r->cap_entries ? 2 * r->cap_entries : 8;
            r->entries = mt_xrealloc(r->entries, (size_t)r->cap_entries * sizeof *r->entries);
        }
        e = &r->entries[r->n_entries++];
        memset(e, 0, sizeof *e);
        snprintf(e->name, sizeof e->name, "%s", name);
    }
    if (e->cur) retire(r, e->cur);
    v->version = ++e->last_version;
    e->cur = v;
    snprintf(e->path, sizeof e->path, "%s", dir);
    snprintf(e->base_hash, sizeof e->base_hash, "%s", meta.base_hash);
    snprintf(e->thresholds, sizeof e->thresholds, "%s", meta.thresholds_json ? meta.thresholds_json : "");
    e->load_seconds = t1 - t0;
    e->loaded_at = t1;
    e->last_used = ++r->clock;
    evict(r, e);
    if (version) *version = v->version;
    pthread_mutex_unlock(&r->mu);
    free(meta.thresholds_json);
    return MT_OK;
}

mt_status mt_registry_unload(mt_registry *r, const char *name, mt_error *err) {
    pthread_mutex_lock(&r->mu);
    reg_entry *e = find_entry(r, name);
    mt_status st = MT_OK;
    if (!e || !e->cur) {
        st = mt_error_set(err, MT_ERR_NOT_FOUND, "registry: no adapter named \"%s\" is loaded", name);
    } else {
        retire(r, e->cur);
        e->cur = NULL;
    }
    pthread_mutex_unlock(&r->mu);
    return st;
}

mt_status mt_registry_acquire(mt_registry *r, const char *name, mt_adapter_ref *out, mt_error *err) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&r->mu);
    reg_entry *e = find_entry(r, name);
    mt_status st = MT_OK;
    if (!e || !e->cur) {
        st = mt_error_set(err, MT_ERR_NOT_FOUND, "registry: no adapter named \"%s\" is loaded", name);
    } else {
        e->cur->refs++;
        e->last_used = ++r->clock;
        out->adapter = mt_lora_adapter(e->cur->lora);
        out->version = e->cur->version;
        out->handle = e->cur;
    }
    pthread_mutex_unlock(&r->mu);
    return st;
}

void mt_registry_release(mt_registry *r, mt_adapter_ref *ref) {
    if (!ref || !ref->handle) return;
    pthread_mutex_lock(&r->mu);
    reg_version *v = ref->handle;
    MT_ASSERT(v->refs > 0);
    v->refs--;
    if (!v->current && v->refs == 0) {
        for (reg_version **p = &r->retired; *p; p = &(*p)->next)
            if (*p == v) {
                *p = v->next;
                break;
            }
        version_free(v);
    }
    pthread_mutex_unlock(&r->mu);
    memset(ref, 0, sizeof *ref);
}

static void fill_info(const reg_entry *e, mt_registry_info *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", e->name);
    snprintf(out->path, sizeof out->path, "%s", e->path);
    out->version = e->cur->version;
    out->max_rank = mt_lora_max_rank(e->cur->lora);
    out->n_modules = e->cur->lora->n_mods;
    out->refs = e->cur->refs;
    out->load_seconds = e->load_seconds;
    out->loaded_at = e->loaded_at;
    snprintf(out->base_hash, sizeof out->base_hash, "%s", e->base_hash);
    snprintf(out->thresholds_json, sizeof out->thresholds_json, "%s", e->thresholds);
}

int mt_registry_count(mt_registry *r) {
    pthread_mutex_lock(&r->mu);
    int n = loaded_count(r);
    pthread_mutex_unlock(&r->mu);
    return n;
}

bool mt_registry_get(mt_registry *r, int i, mt_registry_info *out) {
    bool found = false;
    pthread_mutex_lock(&r->mu);
    for (int k = 0, seen = 0; k < r->n_entries && !found; k++) {
        if (!r->entries[k].cur) continue;
        if (seen++ == i) {
            fill_info(&r->entries[k], out);
            found = true;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}

bool mt_registry_find(mt_registry *r, const char *name, mt_registry_info *out) {
    pthread_mutex_lock(&r->mu);
    reg_entry *e = find_entry(r, name);
    bool found = e && e->cur;
    if (found) fill_info(e, out);
    pthread_mutex_unlock(&r->mu);
    return found;
}

int mt_registry_live_versions(mt_registry *r) {
    pthread_mutex_lock(&r->mu);
    int n = loaded_count(r);
    for (reg_version *v = r->retired; v; v = v->next) n++;
    pthread_mutex_unlock(&r->mu);
    return n;
}
