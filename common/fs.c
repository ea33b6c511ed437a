/* fs.c — whole-file reads, crash-safe atomic writes, mkdir -p, and path joins. */
#define _GNU_SOURCE
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

mt_status mt_read_file(const char *path, char **out, size_t *len, mt_error *err) {
    *out = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return mt_error_set(err, MT_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = mt_malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *grown = cap < SIZE_MAX / 4 ? mt_realloc(buf, cap * 2 + 1) : NULL;
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
    }
    if (!buf) {
        fclose(f);
        return mt_error_set(err, MT_ERR_NOMEM, "%s: out of memory reading the file (%zu bytes so far)", path, n);
    }
    if (ferror(f)) {
        fclose(f);
        free(buf);
        return mt_error_set(err, MT_ERR_IO, "%s: read error", path);
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return MT_OK;
}

/* The fault hook in front of a system call: -1 with errno set when the call must fail. */
static int fault(mt_fault_kind kind, const char *what) {
    int e = mt_fault_io(kind, what);
    if (e) errno = e;
    return e ? -1 : 0;
}

mt_status mt_fsync_dir(const char *path, mt_error *err) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return mt_error_set(err, MT_ERR_IO, "%s: cannot open folder to sync: %s", path, strerror(errno));
    int rc = fault(MT_FAULT_FSYNC, path);
    if (rc == 0) rc = fsync(fd);
    int e = errno;
    close(fd);
    /* some file systems cannot sync a folder (EINVAL); the rename is then as durable as it gets */
    if (rc != 0 && e != EINVAL) return mt_error_set(err, MT_ERR_IO, "%s: fsync of folder failed: %s", path, strerror(e));
    return MT_OK;
}

static mt_status fsync_dir_of(const char *path, mt_error *err) {
    char *copy = mt_strdup(path);
    if (!copy) return mt_error_set(err, MT_ERR_NOMEM, "%s: out of memory", path);
    mt_status st = mt_fsync_dir(dirname(copy), err);
    free(copy);
    return st;
}

int mt_fault_write(int fd, const void *data, size_t len, const char *what) {
    const uint8_t *p = data;
    while (len > 0) {
        if (fault(MT_FAULT_WRITE, what) != 0) return -1;
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int mt_fault_fsync(int fd, const char *what) { return fault(MT_FAULT_FSYNC, what) != 0 ? -1 : fsync(fd); }

int mt_fault_rename(const char *from, const char *to) { return fault(MT_FAULT_RENAME, to) != 0 ? -1 : rename(from, to); }

mt_status mt_write_file_atomic(const char *path, const void *data, size_t len, mt_error *err) {
    size_t n = strlen(path) + 64;
    char *tmp = mt_malloc(n);
    if (!tmp) return mt_error_set(err, MT_ERR_NOMEM, "%s: out of memory", path);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int fd = fault(MT_FAULT_CREATE, tmp) != 0 ? -1 : open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        mt_status st = mt_error_set(err, MT_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    const char *failed = NULL;
    if (mt_fault_write(fd, data, len, tmp) != 0)
        failed = "write";
    else if (mt_fault_fsync(fd, tmp) != 0)
        failed = "fsync";
    if (failed) {
        mt_status st = mt_error_set(err, MT_ERR_IO, "%s: %s failed: %s", tmp, failed, strerror(errno));
        close(fd);
        unlink(tmp);
        free(tmp);
        return st;
    }
    close(fd);
    if (mt_fault_rename(tmp, path) != 0) {
        mt_status st = mt_error_set(err, MT_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return st;
    }
    free(tmp);
    return fsync_dir_of(path, err);
}

mt_status mt_mkdirs(const char *path, mt_error *err) {
    char *p = mt_strdup(path);
    if (!p) return mt_error_set(err, MT_ERR_NOMEM, "%s: out of memory", path);
    size_t n = strlen(p);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] == '/' || p[i] == '\0') {
            char c = p[i];
            p[i] = '\0';
            if (!mt_is_dir(p) && (fault(MT_FAULT_CREATE, p) != 0 || mkdir(p, 0755) != 0) && errno != EEXIST) {
                mt_status st = mt_error_set(err, MT_ERR_IO, "%s: cannot create folder: %s", p, strerror(errno));
                free(p);
                return st;
            }
            p[i] = c;
        }
    }
    free(p);
    if (!mt_is_dir(path)) return mt_error_set(err, MT_ERR_IO, "%s: exists and is not a folder", path);
    return MT_OK;
}

bool mt_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

bool mt_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool mt_path_join(char *dst, size_t cap, const char *dir, const char *name) {
    int n = snprintf(dst, cap, "%s/%s", dir, name);
    return n >= 0 && (size_t)n < cap;
}

double mt_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int mt_edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    int *row = mt_xmalloc((lb + 1) * sizeof *row);
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int best = diag + cost;
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    int d = row[lb];
    free(row);
    return d;
}
