/* dist.h — the collective layer of data-parallel training: which rank of a job this process is,
 * and the all-reduces the trainer needs (gradient buckets, step scalars). Over MPI when moetune
 * is built with it (MOETUNE_MPI) and started by a launcher (mpirun, srun with PMIx); a single
 * rank otherwise, with no MPI call at all. On GPUs this is where NCCL plugs in, its communicator
 * bootstrapped over the MPI one (docs/scale-out.md). */
#ifndef MT_DIST_H
#define MT_DIST_H

#include <stdbool.h>
#include <stddef.h>

#include "common/common.h"

typedef struct mt_dist mt_dist;

typedef enum mt_dist_op {
    MT_DIST_OP_SUM,
    MT_DIST_OP_MAX,
    MT_DIST_OP_MIN,
} mt_dist_op;

/* Whether this binary has the MPI layer. */
bool mt_dist_built(void);
/* Whether a launcher started this process as one rank of a job (its environment says so:
 * OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_SIZE). Not launched: mt_dist_open makes one rank and
 * never initialises MPI, so plain runs start as fast as before and sanitizers see no libmpi. */
bool mt_dist_launched(void);

/* Joins the job (MPI_Init_thread, funneled: OpenMP threads never call MPI) or, when not
 * launched, makes a single rank. Errors of collectives come back as statuses
 * (MPI_ERRORS_RETURN) rather than aborting inside libmpi. Launched by mpirun into a binary
 * built without MPI: MT_ERR_UNSUPPORTED (N copies of one rank would each train alone). */
mt_status mt_dist_open(mt_dist **out, mt_error *err);
/* Leaves the job (MPI_Finalize: every rank must reach it) and frees d; NULL is a no-op. */
void mt_dist_close(mt_dist *d);
/* Ends every rank of the job now with `code` (MPI_Abort): what a rank does after a failure that
 * the others cannot see, so that they exit instead of waiting in the next collective. Alone: a
 * no-op that returns (the caller exits as it would have). */
void mt_dist_abort(mt_dist *d, int code);

int mt_dist_rank(const mt_dist *d); /* 0 for NULL */
int mt_dist_size(const mt_dist *d); /* 1 for NULL */

/* In place over every rank: x[0..n) ← op over ranks of x[0..n). Every rank must call it with
 * the same n and op, in the same order as its other collectives. The result is the same on
 * every rank. */
mt_status mt_dist_allreduce_f32(mt_dist *d, float *x, size_t n, mt_dist_op op, mt_error *err);
mt_status mt_dist_allreduce_f64(mt_dist *d, double *x, size_t n, mt_dist_op op, mt_error *err);
/* Every rank waits until all have arrived. */
mt_status mt_dist_barrier(mt_dist *d, mt_error *err);

#endif
