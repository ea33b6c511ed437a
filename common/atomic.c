/* atomic.c — crash-safe writing of files too large to hold in memory: data streams into a
 * uniquely named temporary file in the destination folder, which replaces the destination
 * only once it is complete and on disk (fsync, rename, fsync of the folder). */
#define _GNU_SOURCE
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct mt_atomic_file {
    char *path; /* destination */
    char *tmp;  /* temporary file being written */
    int fd;
    /* Small writes (headers, converted chunks) are gathered so each write(2) moves a
     * worthwhile amount; the buffer is flushed before commit. */
    uint8_t *buf;
    size_t nbuf;
};

enum { ATOMIC_BUF = 1 << 20 };

mt_status mt_atomic_file_open(mt_atomic_file **out, const char *path, mt_error *err) {
    *out = NULL;
    size_t n = strlen(path) + 16;
    char *tmp = mt_malloc(n);
    if (!tmp) return mt_error_set(err, MT_ERR_NOMEM, "%s: out of memory", path);
    snprintf(tmp, n, "%s.tmp.XXXXXX", path);
    /* mkostemp: a unique name, so two writers of the same destination never share a file. */
    int e = mt_fault_io(MT_FAULT_CREATE, path);
    int fd = e ? (errno = e, -1) : mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        mt_status st = mt_error_set(err, MT_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(errno));
        free(tmp);
        return st;
    }
    /* mkostemp creates 0600; weights and configs are meant to be readable like any file
     * (the mode mt_write_file_atomic gives; umask is not consulted, as reading it races). */
    if (fchmod(fd, 0644) != 0) {
        mt_status st = mt_error_set(err, MT_ERR_IO, "%s: chmod failed: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        free(tmp);
        return st;
    }
    mt_atomic_file *f = mt_calloc(1, sizeof *f);
    if (f) {
        f->tmp = tmp;
        f->fd = fd;
        f->path = mt_strdup(path);
        f->buf = mt_malloc(ATOMIC_BUF);
    }
    if (!f || !f->path || !f->buf) {
        if (f) mt_atomic_file_abort(f);
        else {
            close(fd);
            unlink(tmp);
            free(tmp);
        }
        return mt_error_set(err, MT_ERR_NOMEM, "%s: out of memory opening the file", path);
    }
    *out = f;
    return MT_OK;
}

static mt_status write_all(mt_atomic_file *f, const uint8_t *p, size_t len, mt_error *err) {
    if (mt_fault_write(f->fd, p, len, f->tmp) != 0)
        return mt_error_set(err, MT_ERR_IO, "%s: write failed: %s", f->tmp, strerror(errno));
    return MT_OK;
}

static mt_status flush_buf(mt_atomic_file *f, mt_error *err) {
    mt_status st = write_all(f, f->buf, f->nbuf, err);
    f->nbuf = 0;
    return st;
}

mt_status mt_atomic_file_write(mt_atomic_file *f, const void *data, size_t len, mt_error *err) {
    const uint8_t *p = data;
    if (f->nbuf + len <= ATOMIC_BUF) {
        memcpy(f->buf + f->nbuf, p, len);
        f->nbuf += len;
        return MT_OK;
    }
    mt_status st = flush_buf(f, err);
    if (st != MT_OK) return st;
    if (len >= ATOMIC_BUF) return write_all(f, p, len, err);
    memcpy(f->buf, p, len);
    f->nbuf = len;
    return MT_OK;
}

static void free_handle(mt_atomic_file *f) {
    free(f->path);
    free(f->tmp);
    free(f->buf);
    free(f);
}

void mt_atomic_file_abort(mt_atomic_file *f) {
    if (!f) return;
    close(f->fd);
    unlink(f->tmp);
    free_handle(f);
}

mt_status mt_atomic_file_commit(mt_atomic_file *f, mt_error *err) {
    mt_status st = flush_buf(f, err);
    if (st == MT_OK && mt_fault_fsync(f->fd, f->tmp) != 0)
        st = mt_error_set(err, MT_ERR_IO, "%s: fsync failed: %s", f->tmp, strerror(errno));
    if (st != MT_OK) {
        mt_atomic_file_abort(f);
        return st;
    }
    if (close(f->fd) != 0) {
        st = mt_error_set(err, MT_ERR_IO, "%s: close failed: %s", f->tmp, strerror(errno));
        unlink(f->tmp);
        free_handle(f);
        return st;
    }
    if (mt_fault_rename(f->tmp, f->path) != 0) {
        st = mt_error_set(err, MT_ERR_IO, "%s: rename failed: %s", f->path, strerror(errno));
        unlink(f->tmp);
        free_handle(f);
        return st;
    }
    /* The rename is durable only once the folder's entry is on disk too. The path is cut at
     * its last '/' in place (the handle is freed next). */
    char *slash = strrchr(f->path, '/');
    if (slash == f->path) slash[1] = '\0';
    else if (slash) *slash = '\0';
    st = mt_fsync_dir(slash ? f->path : ".", err);
    free_handle(f);
    return st;
}
