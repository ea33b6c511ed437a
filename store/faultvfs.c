/* faultvfs.c — a SQLite VFS that passes every page write, truncate and sync of the store
 * through the fault hook (mt_fault_io) before handing it to the real VFS: the crash and fault
 * tests can kill the process, or fail the call with SQLITE_FULL / SQLITE_IOERR, in the middle of
 * a store write. Installed only while fault injection is armed; otherwise SQLite's own VFS runs. */
#include <errno.h>
#include <string.h>

#include "store-impl.h"

typedef struct fault_file {
    sqlite3_file base;
    sqlite3_file *real; /* the real VFS's file, in the same allocation, just after this struct */
    const char *name;
} fault_file;

static sqlite3_vfs g_vfs, *g_real;

#define REAL(f) (((fault_file *)(f))->real)

static int to_sqlite(int e, int ioerr) { return e == ENOSPC ? SQLITE_FULL : ioerr; }

static int f_close(sqlite3_file *f) {
    int rc = REAL(f)->pMethods ? REAL(f)->pMethods->xClose(REAL(f)) : SQLITE_OK;
    f->pMethods = NULL;
    return rc;
}
static int f_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off) { return REAL(f)->pMethods->xRead(REAL(f), p, n, off); }
static int f_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off) {
    int e = mt_fault_io(MT_FAULT_DB, ((fault_file *)f)->name);
    if (e) return to_sqlite(e, SQLITE_IOERR_WRITE);
    return REAL(f)->pMethods->xWrite(REAL(f), p, n, off);
}
static int f_truncate(sqlite3_file *f, sqlite3_int64 size) {
    int e = mt_fault_io(MT_FAULT_DB, ((fault_file *)f)->name);
    if (e) return to_sqlite(e, SQLITE_IOERR_TRUNCATE);
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int f_sync(sqlite3_file *f, int flags) {
    int e = mt_fault_io(MT_FAULT_DB, ((fault_file *)f)->name);
    if (e) return to_sqlite(e, SQLITE_IOERR_FSYNC);
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int f_size(sqlite3_file *f, sqlite3_int64 *size) { return REAL(f)->pMethods->xFileSize(REAL(f), size); }
static int f_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int f_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int f_reserved(sqlite3_file *f, int *out) { return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out); }
static int f_control(sqlite3_file *f, int op, void *arg) { return REAL(f)->pMethods->xFileControl(REAL(f), op, arg); }
static int f_sector(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int f_device(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int f_shm_map(sqlite3_file *f, int pg, int sz, int extend, void volatile **pp) {
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, extend, pp);
}
static int f_shm_lock(sqlite3_file *f, int off, int n, int flags) {
    return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void f_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int f_shm_unmap(sqlite3_file *f, int del) { return REAL(f)->pMethods->xShmUnmap(REAL(f), del); }
static int f_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp) {
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}
static int f_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) { return REAL(f)->pMethods->xUnfetch(REAL(f), off, p); }

static const sqlite3_io_methods g_methods = {
    .iVersion = 3,
    .xClose = f_close,
    .xRead = f_read,
    .xWrite = f_write,
    .xTruncate = f_truncate,
    .xSync = f_sync,
    .xFileSize = f_size,
    .xLock = f_lock,
    .xUnlock = f_unlock,
    .xCheckReservedLock = f_reserved,
    .xFileControl = f_control,
    .xSectorSize = f_sector,
    .xDeviceCharacteristics = f_device,
    .xShmMap = f_shm_map,
    .xShmLock = f_shm_lock,
    .xShmBarrier = f_shm_barrier,
    .xShmUnmap = f_shm_unmap,
    .xFetch = f_fetch,
    .xUnfetch = f_unfetch,
};

static int f_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags) {
    (void)vfs;
    fault_file *f = (fault_file *)file;
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)(f + 1);
    f->name = name ? name : "";
    int rc = g_real->xOpen(g_real, name, f->real, flags, out_flags);
    /* SQLite calls xClose whenever pMethods is set, even after a failed open */
    f->base.pMethods = f->real->pMethods ? &g_methods : NULL;
    return rc;
}

static int f_delete(sqlite3_vfs *vfs, const char *name, int sync) {
    (void)vfs;
    int e = mt_fault_io(MT_FAULT_DB, name);
    if (e) return to_sqlite(e, SQLITE_IOERR_DELETE);
    return g_real->xDelete(g_real, name, sync);
}

/* Everything else goes straight to the real VFS. */
static int f_access(sqlite3_vfs *v, const char *n, int fl, int *out) { (void)v; return g_real->xAccess(g_real, n, fl, out); }
static int f_fullpath(sqlite3_vfs *v, const char *n, int cap, char *out) {
    (void)v;
    return g_real->xFullPathname(g_real, n, cap, out);
}
static void *f_dlopen(sqlite3_vfs *v, const char *n) { (void)v; return g_real->xDlOpen(g_real, n); }
static void f_dlerror(sqlite3_vfs *v, int n, char *msg) { (void)v; g_real->xDlError(g_real, n, msg); }
static void (*f_dlsym(sqlite3_vfs *v, void *h, const char *s))(void) { (void)v; return g_real->xDlSym(g_real, h, s); }
static void f_dlclose(sqlite3_vfs *v, void *h) { (void)v; g_real->xDlClose(g_real, h); }
static int f_random(sqlite3_vfs *v, int n, char *out) { (void)v; return g_real->xRandomness(g_real, n, out); }
static int f_sleep(sqlite3_vfs *v, int us) { (void)v; return g_real->xSleep(g_real, us); }
static int f_time(sqlite3_vfs *v, double *t) { (void)v; return g_real->xCurrentTime(g_real, t); }
static int f_lasterr(sqlite3_vfs *v, int n, char *msg) { (void)v; return g_real->xGetLastError(g_real, n, msg); }
static int f_time64(sqlite3_vfs *v, sqlite3_int64 *t) { (void)v; return g_real->xCurrentTimeInt64(g_real, t); }

const char *mt_st_fault_vfs(void) {
    if (!mt_fault_armed()) return NULL;
    if (g_real) return g_vfs.zName;
    sqlite3_vfs *real = sqlite3_vfs_find(NULL);
    if (!real || real->iVersion < 2) return NULL;
    g_real = real;
    g_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(fault_file) + real->szOsFile,
        .mxPathname = real->mxPathname,
        .zName = "moetune-fault",
        .xOpen = f_open,
        .xDelete = f_delete,
        .xAccess = f_access,
        .xFullPathname = f_fullpath,
        .xDlOpen = f_dlopen,
        .xDlError = f_dlerror,
        .xDlSym = f_dlsym,
        .xDlClose = f_dlclose,
        .xRandomness = f_random,
        .xSleep = f_sleep,
        .xCurrentTime = f_time,
        .xGetLastError = f_lasterr,
        .xCurrentTimeInt64 = f_time64,
    };
    if (sqlite3_vfs_register(&g_vfs, 0) != SQLITE_OK) {
        g_real = NULL;
        return NULL;
    }
    return g_vfs.zName;
}
