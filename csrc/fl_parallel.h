/* Deterministic fork-safe parallel loops on plain pthreads.
 *
 * Threads are created per call and joined before returning: no pool lives
 * between calls, so a process that forks after a call has nothing to
 * repair (GNU OpenMP's pool hangs such a child).  Work is split into
 * contiguous ranges; callers make results independent of the split. */
#ifndef FL_PARALLEL_H
#define FL_PARALLEL_H

#include <stdint.h>

typedef void (*fl_range_fn)(void *ctx, int64_t begin, int64_t end);

/* Threads a call may use now (setting, env or CPU count; >= 1). */
int fl_threads(void);

/* Run fn(ctx, b, e) over [0, n) in up to fl_threads() contiguous ranges,
 * each at least min_per_thread items (one range, in the caller, below). */
void fl_parallel_for(fl_range_fn fn, void *ctx, int64_t n, int64_t min_per_thread);

#endif
