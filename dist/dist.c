/* dist.c — ranks and all-reduces over MPI (MT_HAVE_MPI), or one rank that reduces nothing.
 * Counts beyond INT_MAX elements go in pieces, since MPI counts are ints. */
#define _GNU_SOURCE
#include "dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MT_HAVE_MPI
#include <mpi.h>
#endif

struct mt_dist {
    int rank, size;
    bool mpi; /* MPI_Init was called (and MPI_Finalize is owed) */
};

bool mt_dist_built(void) {
#ifdef MT_HAVE_MPI
    return true;
#else
    return false;
#endif
}

bool mt_dist_launched(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return true;
    }
    return false;
}

int mt_dist_rank(const mt_dist *d) { return d ? d->rank : 0; }
int mt_dist_size(const mt_dist *d) { return d ? d->size : 1; }

#ifdef MT_HAVE_MPI
static mt_status mpi_fail(mt_error *err, int rc, const char *what) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", rc);
    return mt_error_set(err, MT_ERR_IO, "%s failed: %s (a rank has died or the network failed)", what, s);
}

static MPI_Op mpi_op(mt_dist_op op) {
    switch (op) {
    case MT_DIST_OP_MAX: return MPI_MAX;
    case MT_DIST_OP_MIN: return MPI_MIN;
    case MT_DIST_OP_SUM: break;
    }
    return MPI_SUM;
}

static mt_status allreduce(mt_dist *d, void *x, size_t n, size_t elem, MPI_Datatype t, mt_dist_op op,
                           mt_error *err) {
    if (!d || !d->mpi || d->size == 1) return MT_OK;
    char *p = x;
    while (n > 0) {
        int c = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, c, t, mpi_op(op), MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "all-reduce");
        p += (size_t)c * elem;
        n -= (size_t)c;
    }
    return MT_OK;
}
#endif

mt_status mt_dist_open(mt_dist **out, mt_error *err) {
    *out = NULL;
    mt_dist *d = mt_xcalloc(1, sizeof *d);
    d->size = 1;
    if (!mt_dist_launched()) {
        *out = d;
        return MT_OK;
    }
#ifdef MT_HAVE_MPI
    int provided = 0, rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) {
        free(d);
        return mpi_fail(err, rc, "MPI_Init_thread");
    }
    d->mpi = true;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    *out = d;
    return MT_OK;
#else
    free(d);
    return mt_error_set(err, MT_ERR_UNSUPPORTED,
                        "started by an MPI launcher, but this moetune was built without MPI (MOETUNE_MPI=OFF): "
                        "each process would train alone; install libopenmpi-dev and rebuild");
#endif
}

void mt_dist_close(mt_dist *d) {
    if (!d) return;
#ifdef MT_HAVE_MPI
    if (d->mpi) MPI_Finalize();
#endif
    free(d);
}

void mt_dist_abort(mt_dist *d, int code) {
#ifdef MT_HAVE_MPI
    if (d && d->mpi && d->size > 1) MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
#else
    (void)d;
    (void)code;
#endif
}

mt_status mt_dist_allreduce_f32(mt_dist *d, float *x, size_t n, mt_dist_op op, mt_error *err) {
#ifdef MT_HAVE_MPI
    return allreduce(d, x, n, sizeof *x, MPI_FLOAT, op, err);
#else
    (void)d, (void)x, (void)n, (void)op, (void)err;
    return MT_OK;
#endif
}

mt_status mt_dist_allreduce_f64(mt_dist *d, double *x, size_t n, mt_dist_op op, mt_error *err) {
#ifdef MT_HAVE_MPI
    return allreduce(d, x, n, sizeof *x, MPI_DOUBLE, op, err);
#else
    (void)d, (void)x, (void)n, (void)op, (void)err;
    return MT_OK;
#endif
}

mt_status mt_dist_barrier(mt_dist *d, mt_error *err) {
#ifdef MT_HAVE_MPI
    if (!d || !d->mpi || d->size == 1) return MT_OK;
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "barrier");
#else
    (void)d, (void)err;
#endif
    return MT_OK;
}
