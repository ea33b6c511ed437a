/* adapters.c — adapters while serving: loading and unloading by name with the path confined to
 * the adapters folder (no "..", nothing outside it, no symlink out of it: realpath decides), the
 * folder's initial scan, and the inotify watch that loads new and replaced exports once their
 * files have been quiet for a moment (an export writes several files). A request holds the
 * version it started with; the registry keeps it alive until released. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine-impl.h"

#define WATCH_DEBOUNCE_S 0.25
#define WATCH_MAX 1024

bool mt_eng_name_ok(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n >= MT_ENG_NAME_MAX || name[0] == '.') return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

static bool has_dotdot(const char *p) {
    for (const char *s = p; *s;) {
        const char *slash = strchr(s, '/');
        size_t n = slash ? (size_t)(slash - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.') return true;
        if (!slash) break;
        s = slash + 1;
    }
    return false;
}

mt_status mt_eng_confine(const mt_engine *e, const char *path, char *out, size_t cap, mt_error *err) {
    if (!e->adapters_dir[0])
        return mt_error_set(err, MT_ERR_INVALID,
                            "this server was started without --adapters: adapters load only from that folder");
    if (has_dotdot(path)) return mt_error_set(err, MT_ERR_INVALID, "'%s': '..' is not allowed in adapter paths", path);
    char cand[PATH_MAX + 8];
    if (path[0] == '/')
        snprintf(cand, sizeof cand, "%s", path);
    else
        snprintf(cand, sizeof cand, "%s/%s", e->adapters_dir, path);
    char real[PATH_MAX];
    if (!realpath(cand, real))
        return mt_error_set(err, MT_ERR_NOT_FOUND, "'%s': no such adapter folder in %s", path, e->adapters_dir);
    size_t n = strlen(e->adapters_dir);
    if (strncmp(real, e->adapters_dir, n) != 0 || real[n] != '/' || !real[n + 1])
        return mt_error_set(err, MT_ERR_INVALID, "'%s' lies outside the adapters folder %s", path, e->adapters_dir);
    if (!mt_is_dir(real)) return mt_error_set(err, MT_ERR_INVALID, "'%s' is not a folder", path);
    if (strlen(real) >= cap) return mt_error_set(err, MT_ERR_INVALID, "'%s': path too long", path);
    snprintf(out, cap, "%s", real);
    return MT_OK;
}

mt_status mt_engine_load_adapter(mt_engine *e, const char *name, const char *path, bool replace, int64_t *version,
                                 mt_error *err) {
    if (!mt_eng_name_ok(name))
        return mt_error_set(err, MT_ERR_INVALID, "'%s' is not a valid adapter name (letters, digits, . _ -)", name);
    if (!strcmp(name, e->served_name))
        return mt_error_set(err, MT_ERR_INVALID, "'%s' is the base model's name", name);
    char real[PATH_MAX];
    mt_status st = mt_eng_confine(e, path, real, sizeof real, err);
    if (st) return st;
    mt_registry_info info;
    if (!replace && mt_registry_find(e->reg, name, &info))
        return mt_error_set(err, MT_ERR_INVALID, "The lora adapter '%s' has already been loaded.", name);
    int64_t v = 0;
    st = mt_registry_load(e->reg, name, real, &v, err);
    if (st) {
        mt_eng_log(e, "adapter %s: not loaded: %s", name, err->msg);
        return st;
    }
    if (mt_registry_find(e->reg, name, &info))
        mt_eng_log(e, "adapter %s: version %lld loaded from %s in %.2f ms (rank %d, %d modules, base %.12s%s%s)", name,
                   (long long)v, real, info.load_seconds * 1e3, info.max_rank, info.n_modules,
                   info.base_hash[0] ? info.base_hash : "unrecorded", info.thresholds_json[0] ? ", thresholds " : "",
                   info.thresholds_json);
    if (version) *version = v;
    return MT_OK;
}

mt_status mt_engine_unload_adapter(mt_engine *e, const char *name, mt_error *err) {
    mt_status st = mt_registry_unload(e->reg, name, err);
    if (st == MT_OK) mt_eng_log(e, "adapter %s: unloaded", name);
    return st;
}

static bool looks_like_adapter(const char *dir) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    if (!mt_path_exists(p)) return false;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    return mt_path_exists(p);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void mt_eng_list_folders(const mt_engine *e, void (*fn)(void *user, const char *name, const char *path), void *user) {
    if (!e->adapters_dir[0]) return;
    DIR *d = opendir(e->adapters_dir);
    if (!d) return;
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *de; (de = readdir(d));) {
        if (!mt_eng_name_ok(de->d_name)) continue;
        names = mt_xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = mt_xstrdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", e->adapters_dir, names[i]);
        /* a symlink pointing out of the folder is not servable */
        char real[PATH_MAX];
        size_t dl = strlen(e->adapters_dir);
        if (mt_is_dir(path) && looks_like_adapter(path) && realpath(path, real) &&
            !strncmp(real, e->adapters_dir, dl) && real[dl] == '/')
            fn(user, names[i], path);
        free(names[i]);
    }
    free(names);
}

typedef struct scan_ctx {
    mt_engine *e;
    int loaded;
} scan_ctx;

static void load_found(void *user, const char *name, const char *path) {
    scan_ctx *c = user;
    if (c->loaded >= c->e->o.max_loaded) return; /* the rest load on first use */
    mt_error err = {0};
    if (mt_engine_load_adapter(c->e, name, name, true, NULL, &err) == MT_OK) c->loaded++;
    (void)path;
}

/* ---- the watch ---- */

typedef struct watch_state {
    int wd[WATCH_MAX];
    char name[WATCH_MAX][MT_ENG_NAME_MAX]; /* "" for the top folder */
    int n;
    char pending[WATCH_MAX][MT_ENG_NAME_MAX];
    double last[WATCH_MAX];
    int n_pending;
} watch_state;

static void watch_add(mt_engine *e, watch_state *w, const char *name) {
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->name[i], name)) return;
    if (w->n == WATCH_MAX) return;
    char path[PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/%s", e->adapters_dir, name);
    uint32_t mask = name[0] ? IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_ONLYDIR
                            : IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ONLYDIR;
    int wd = inotify_add_watch(e->inotify_fd, path, mask);
    if (wd < 0) return;
    w->wd[w->n] = wd;
    snprintf(w->name[w->n], MT_ENG_NAME_MAX, "%s", name);
    w->n++;
}

static void mark_pending(watch_state *w, const char *name) {
    double now = mt_now_seconds();
    for (int i = 0; i < w->n_pending; i++)
        if (!strcmp(w->pending[i], name)) {
            w->last[i] = now;
            return;
        }
    if (w->n_pending == WATCH_MAX) return;
    snprintf(w->pending[w->n_pending], MT_ENG_NAME_MAX, "%s", name);
    w->last[w->n_pending++] = now;
}

static void drain_events(mt_engine *e, watch_state *w) {
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(e->inotify_fd, buf, sizeof buf);
        if (n <= 0) return;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            const char *owner = NULL;
            for (int i = 0; i < w->n; i++)
                if (w->wd[i] == ev->wd) owner = w->name[i];
            if (!owner) continue;
            if (!owner[0]) {
                if (ev->len == 0 || !mt_eng_name_ok(ev->name)) continue;
                if (ev->mask & (IN_CREATE | IN_MOVED_TO)) watch_add(e, w, ev->name);
                mark_pending(w, ev->name);
            } else if (ev->mask & IN_DELETE_SELF) {
                mark_pending(w, owner);
                for (int i = 0; i < w->n; i++)
                    if (w->wd[i] == ev->wd) {
                        w->wd[i] = w->wd[w->n - 1];
                        memcpy(w->name[i], w->name[w->n - 1], MT_ENG_NAME_MAX);
                        w->n--;
                        break;
                    }
            } else {
                mark_pending(w, owner);
            }
        }
    }
}

/* Loads (or unloads, when the folder is gone) the names that have been quiet long enough;
 * force handles every pending name at once (a sync). */
static void settle(mt_engine *e, watch_state *w, bool force) {
    double now = mt_now_seconds();
    for (int i = 0; i < w->n_pending;) {
        if (!force && now - w->last[i] < WATCH_DEBOUNCE_S) {
            i++;
            continue;
        }
        char name[MT_ENG_NAME_MAX], path[PATH_MAX + 300];
        snprintf(name, sizeof name, "%s", w->pending[i]);
        snprintf(path, sizeof path, "%s/%s", e->adapters_dir, name);
        memcpy(w->pending[i], w->pending[w->n_pending - 1], MT_ENG_NAME_MAX);
        w->last[i] = w->last[w->n_pending - 1];
        w->n_pending--;
        mt_error err = {0};
        mt_registry_info info;
        if (!mt_is_dir(path)) {
            if (mt_registry_find(e->reg, name, &info)) mt_engine_unload_adapter(e, name, &err);
        } else if (looks_like_adapter(path)) {
            pthread_mutex_lock(&e->load_mu);
            mt_engine_load_adapter(e, name, name, true, NULL, &err); /* failures are logged there */
            pthread_mutex_unlock(&e->load_mu);
        }
    }
}

static void *watch_main(void *arg) {
    mt_engine *e = arg;
    watch_state *w = mt_xcalloc(1, sizeof *w);
    watch_add(e, w, "");
    DIR *d = opendir(e->adapters_dir);
    if (d) {
        for (struct dirent *de; (de = readdir(d));)
            if (mt_eng_name_ok(de->d_name)) {
                char p[PATH_MAX + 300];
                snprintf(p, sizeof p, "%s/%s", e->adapters_dir, de->d_name);
                if (mt_is_dir(p)) watch_add(e, w, de->d_name);
            }
        closedir(d);
    }
    for (;;) {
        int timeout = -1;
        if (w->n_pending) timeout = (int)(WATCH_DEBOUNCE_S * 1000 / 2) + 1;
        struct pollfd fds[2] = {{.fd = e->inotify_fd, .events = POLLIN}, {.fd = e->wake_fd, .events = POLLIN}};
        poll(fds, 2, timeout);
        uint64_t wake = 0;
        if (fds[1].revents & POLLIN) {
            ssize_t got = read(e->wake_fd, &wake, sizeof wake);
            (void)got;
        }
        pthread_mutex_lock(&e->watch_mu);
        bool stop = e->stopping_watch;
        uint64_t want = e->watch_seen;
        pthread_mutex_unlock(&e->watch_mu);
        if (stop) break;
        drain_events(e, w);
        bool sync = want > e->watch_done_local;
        settle(e, w, sync);
        if (sync) {
            drain_events(e, w);
            settle(e, w, true);
            e->watch_done_local = want;
            pthread_mutex_lock(&e->watch_mu);
            e->watch_done = want;
            pthread_cond_broadcast(&e->watch_cv);
            pthread_mutex_unlock(&e->watch_mu);
        }
    }
    free(w);
    return NULL;
}

void mt_engine_watch_sync(mt_engine *e) {
    if (!e->watch_started) return;
    pthread_mutex_lock(&e->watch_mu);
    uint64_t ticket = ++e->watch_seen;
    uint64_t one = 1;
    ssize_t put = write(e->wake_fd, &one, sizeof one);
    (void)put;
    while (e->watch_done < ticket) pthread_cond_wait(&e->watch_cv, &e->watch_mu);
    pthread_mutex_unlock(&e->watch_mu);
}

mt_status mt_eng_adapters_init(mt_engine *e, mt_error *err) {
    if (!e->o.adapters_dir) return MT_OK;
    char real[PATH_MAX];
    if (!realpath(e->o.adapters_dir, real) || !mt_is_dir(real))
        return mt_error_set(err, MT_ERR_NOT_FOUND, "%s: the adapters folder does not exist", e->o.adapters_dir);
    snprintf(e->adapters_dir, sizeof e->adapters_dir, "%s", real);
    scan_ctx c = {e, 0};
    mt_eng_list_folders(e, load_found, &c);
    if (!e->o.watch) return MT_OK;
    e->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->inotify_fd < 0 || e->wake_fd < 0)
        return mt_error_set(err, MT_ERR_IO, "cannot watch %s: %s", real, strerror(errno));
    if (pthread_create(&e->watch_thread, NULL, watch_main, e) != 0)
        return mt_error_set(err, MT_ERR_NOMEM, "cannot start the watch thread");
    e->watch_started = true;
    return MT_OK;
}

void mt_eng_adapters_stop(mt_engine *e) {
    if (e->watch_started) {
        pthread_mutex_lock(&e->watch_mu);
        e->stopping_watch = true;
        pthread_mutex_unlock(&e->watch_mu);
        uint64_t one = 1;
        ssize_t put = write(e->wake_fd, &one, sizeof one);
        (void)put;
        pthread_join(e->watch_thread, NULL);
        e->watch_started = false;
    }
    if (e->inotify_fd >= 0) close(e->inotify_fd);
    if (e->wake_fd >= 0) close(e->wake_fd);
    e->inotify_fd = e->wake_fd = -1;
}
