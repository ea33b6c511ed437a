/* fault.c — fault injection for the crash and fault tests: count I/O points and fallible
 * allocations, and at the armed one fail it (an errno, NULL) or SIGKILL the process, as SQLite
 * tests its recovery by failing the Nth malloc and the Nth write. Unarmed it costs one branch. */
#define _GNU_SOURCE
#include "common/common.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The environment is read once (first call); arming from code overrides it. */
static atomic_int g_init;         /* 0 unread, 1 read */
static atomic_bool g_armed;
static _Atomic int64_t g_io_seen, g_alloc_seen;
static int64_t g_io_at, g_alloc_at;  /* 0 = never */
static int g_io_errno;               /* 0 = SIGKILL */
static bool g_io_persist, g_alloc_persist;
static FILE *g_trace;

static const char *const kind_names[MT_FAULT_KIND_COUNT] = {"write", "fsync", "rename", "create", "remove", "db"};

static void read_env(void) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&g_init, &expected, 1)) return;
    const char *f = getenv("MOETUNE_FAULT");
    if (f && *f) {
        long long n = 0;
        char mode[16] = "";
        if (sscanf(f, "%15[a-z]:%lld", mode, &n) == 2 && n > 0) {
            int e = !strcmp(mode, "kill") ? 0 : !strcmp(mode, "enospc") ? ENOSPC : !strcmp(mode, "eio") ? EIO : -1;
            if (e >= 0) {
                g_io_at = n;
                g_io_errno = e;
                g_io_persist = false;
                atomic_store(&g_armed, true);
            }
        }
    }
    const char *t = getenv("MOETUNE_FAULT_TRACE");
    if (t && *t && (g_trace = fopen(t, "a"))) {
        setvbuf(g_trace, NULL, _IOLBF, 0);
        atomic_store(&g_armed, true);
    }
}

bool mt_fault_armed(void) {
    read_env();
    return atomic_load_explicit(&g_armed, memory_order_relaxed);
}

int mt_fault_io(mt_fault_kind kind, const char *what) {
    if (!mt_fault_armed()) return 0;
    int64_t n = atomic_fetch_add(&g_io_seen, 1) + 1;
    if (g_trace) fprintf(g_trace, "%lld %s %s\n", (long long)n, kind_names[kind], what ? what : "");
    if (g_io_at <= 0 || n < g_io_at || (n > g_io_at && !g_io_persist)) return 0;
    if (g_io_errno == 0) {
        /* no cleanup, no buffers flushed: what a power cut or kill -9 leaves */
        raise(SIGKILL);
        _exit(137);
    }
    return g_io_errno;
}

bool mt_fault_alloc(size_t n) {
    (void)n;
    if (!mt_fault_armed()) return false;
    int64_t k = atomic_fetch_add(&g_alloc_seen, 1) + 1;
    return g_alloc_at > 0 && (k == g_alloc_at || (k > g_alloc_at && g_alloc_persist));
}

void mt_fault_arm_io(int64_t n, int errno_value, bool persistent) {
    read_env();
    g_io_at = n;
    g_io_errno = errno_value;
    g_io_persist = persistent;
    atomic_store(&g_io_seen, 0);
    atomic_store(&g_armed, n > 0 || g_alloc_at > 0 || g_trace);
}

void mt_fault_arm_alloc(int64_t n, bool persistent) {
    read_env();
    g_alloc_at = n;
    g_alloc_persist = persistent;
    atomic_store(&g_alloc_seen, 0);
    atomic_store(&g_armed, n > 0 || g_io_at > 0 || g_trace);
}

void mt_fault_disarm(void) {
    read_env();
    g_io_at = g_alloc_at = 0;
    atomic_store(&g_armed, g_trace != NULL);
}

int64_t mt_fault_io_count(void) { return atomic_load(&g_io_seen); }
int64_t mt_fault_alloc_count(void) { return atomic_load(&g_alloc_seen); }
