/* Per-call pthreads with a deterministic contiguous split (see fl_parallel.h). */
#define _GNU_SOURCE
#include "fl_parallel.h"
#include "fastloss.h"
#include "fl_math.h"
#include "fl_stream.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define FL_MAX_THREADS 256

static int fl_setting;  /* 0: default; written by fl_set_num_threads */
static int fl_default;
static pthread_once_t fl_once = PTHREAD_ONCE_INIT;

static void fl_init_default(void)
{
    const char *env = getenv("FASTLOSS_NUM_THREADS");
    long v = env ? strtol(env, NULL, 10) : 0;
    if (v <= 0) {
        cpu_set_t set;
        /* CPUs this process may use (respects taskset / cgroup cpusets) */
        v = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    }
    fl_default = (int)(v < 1 ? 1 : v > FL_MAX_THREADS ? FL_MAX_THREADS : v);
}

int fl_abi_version(void) { return FL_ABI_VERSION; }

int fl_set_num_threads(int n)
{
    int old = __atomic_load_n(&fl_setting, __ATOMIC_RELAXED);
    __atomic_store_n(&fl_setting, n > 0 ? (n > FL_MAX_THREADS ? FL_MAX_THREADS : n) : 0,
                     __ATOMIC_RELAXED);
    return old;
}

int fl_get_num_threads(void) { return fl_threads(); }

int fl_threads(void)
{
    int s = __atomic_load_n(&fl_setting, __ATOMIC_RELAXED);
    if (s > 0)
        return s;
    pthread_once(&fl_once, fl_init_default);
    return fl_default;
}

typedef struct {
    fl_range_fn fn;
    void *ctx;
    int64_t begin, end;
} fl_job;

static void *fl_run_job(void *arg)
{
    fl_job *j = arg;
    j->fn(j->ctx, j->begin, j->end);
    return NULL;
}

void fl_parallel_for(fl_range_fn fn, void *ctx, int64_t n, int64_t min_per_thread)
{
    int64_t nt = fl_threads();
    if (min_per_thread < 1)
        min_per_thread = 1;
    if (nt > n / min_per_thread)
        nt = n / min_per_thread;
    if (nt <= 1) {
        fn(ctx, 0, n);
        return;
    }
    fl_job jobs[FL_MAX_THREADS];
    pthread_t tid[FL_MAX_THREADS];
    int started[FL_MAX_THREADS];
    for (int64_t t = 0; t < nt; t++) {
        jobs[t] = (fl_job){fn, ctx, n * t / nt, n * (t + 1) / nt};
    }
    for (int64_t t = 1; t < nt; t++)
        /* a thread that cannot start runs inline below: slower, same result */
        started[t] = pthread_create(&tid[t], NULL, fl_run_job, &jobs[t]) == 0;
    fl_run_job(&jobs[0]);
    for (int64_t t = 1; t < nt; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            fl_run_job(&jobs[t]);
    }
}

/* ISA level of this CPU, capped by FASTLOSS_C_ISA (base | avx2 | avx512):
 * the cap lets tests run every compiled variant on one machine. */
static int fl_isa_cached = -1;

int fl_isa(void)
{
    int level = __atomic_load_n(&fl_isa_cached, __ATOMIC_RELAXED);
    if (level >= 0)
        return level;
    level = 0;
#ifdef FL_MULTI_ISA
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        level = 3;
    if (level == 3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
        level = 4;
    const char *cap = getenv("FASTLOSS_C_ISA");
    if (cap != NULL && cap[0] != '\0') {
        int c = strcmp(cap, "base") == 0 ? 0 : strcmp(cap, "avx2") == 0 ? 3 : 4;
        level = level < c ? level : c;
    }
#endif
    __atomic_store_n(&fl_isa_cached, level, __ATOMIC_RELAXED);
    return level;
}

int fl_isa_level(void) { return fl_isa(); }

/* Streaming-store threshold (fl_stream.h): gradients of at least this many
 * bytes.  FL_STREAM_DEFAULT: see csrc/README.md for the measurements. */
#define FL_STREAM_DEFAULT (INT64_C(16) << 20)
#ifdef FL_HAVE_NT
static int64_t fl_stream_min = FL_STREAM_DEFAULT;
#else
static int64_t fl_stream_min = INT64_MAX;  /* no streaming stores on this target */
#endif

int64_t fl_set_stream_min_bytes(int64_t n)
{
#ifdef FL_HAVE_NT
    int64_t v = n < 0 ? FL_STREAM_DEFAULT : n;
#else
    int64_t v = INT64_MAX;
    (void)n;
#endif
    return __atomic_exchange_n(&fl_stream_min, v, __ATOMIC_RELAXED);
}

int64_t fl_get_stream_min_bytes(void) { return __atomic_load_n(&fl_stream_min, __ATOMIC_RELAXED); }
