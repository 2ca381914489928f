/* Streaming (non-temporal) stores for large gradients.
 *
 * A fused call writes its gradient once.  A normal store first reads the
 * cache line it writes (read for ownership), so a large float32 mse call
 * moves 16 bytes per element instead of 12 (z, y in, g out).  Non-temporal
 * stores write whole lines without reading them.  They leave the gradient
 * out of the caches, which costs the caller when it would have stayed
 * there: calls use them only when the gradient has at least
 * fl_get_stream_min_bytes() bytes (fl_parallel.c).  Used by mse only: the
 * compute-bound ops measured no faster, and slower on freshly allocated
 * gradients (csrc/README.md).
 *
 * fl_sw, the streaming writer of one thread: bytes put at consecutive
 * addresses go out as whole 64-byte lines, each by non-temporal stores at
 * its aligned address; the bytes of a line's start that precede the first
 * put go out as normal stores, the bytes of an incomplete last line wait in
 * cb for the next put (NumPy's large arrays start 16 bytes past a page, and
 * rows do not start on lines: storing the partial lines of every block
 * normally would read them all).  A put to another address first writes
 * the waiting bytes normally; fl_sw_end does too, then fences (non-temporal
 * stores are weakly ordered: sfence makes them globally visible before the
 * thread's range returns and is joined).  Only the store instructions
 * differ from the plain loops: the bits written are the same.
 *
 * x86-64 only; elsewhere FL_HAVE_NT is undefined, the threshold is
 * INT64_MAX and fl_sw_put_base is a plain copy.  fl_nt_line_VAR stores one line with the widest vectors of the
 * variant VAR (its FL_ATTR target, so its intrinsics inline there).
 */
#ifndef FL_STREAM_H
#define FL_STREAM_H

#include "fl_math.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* a gradient of this many bytes streams (threshold: fl_set_stream_min_bytes,
 * fl_parallel.c; never where FL_HAVE_NT is undefined) */
int64_t fl_get_stream_min_bytes(void);
FL_INLINE int fl_stream_use(int64_t bytes) { return bytes >= fl_get_stream_min_bytes(); }

#if defined(__x86_64__) || defined(_M_X64)
#define FL_HAVE_NT 1
#include <immintrin.h>

#define FL_LINE 64

/* base: SSE2 (every x86-64); a FASTLOSS_C_NATIVE build takes the widest
 * vectors -march=native enables */
FL_INLINE void fl_nt_line_base(unsigned char *d, const unsigned char *s)
{
#if defined(__AVX512F__)
    _mm512_stream_ps((float *)d, _mm512_loadu_ps((const float *)s));
#elif defined(__AVX__)
    _mm256_stream_ps((float *)d, _mm256_loadu_ps((const float *)s));
    _mm256_stream_ps((float *)(d + 32), _mm256_loadu_ps((const float *)(s + 32)));
#else
    for (int q = 0; q < FL_LINE; q += 16)
        _mm_stream_ps((float *)(d + q), _mm_loadu_ps((const float *)(s + q)));
#endif
}
#ifdef FL_MULTI_ISA
FL_INLINE FL_ATTR_V3 void fl_nt_line_v3(unsigned char *d, const unsigned char *s)
{
    _mm256_stream_ps((float *)d, _mm256_loadu_ps((const float *)s));
    _mm256_stream_ps((float *)(d + 32), _mm256_loadu_ps((const float *)(s + 32)));
}
FL_INLINE FL_ATTR_V4 void fl_nt_line_v4(unsigned char *d, const unsigned char *s)
{
    _mm512_stream_ps((float *)d, _mm512_loadu_ps((const float *)s));
}
#endif

typedef struct {
    unsigned char *next;  /* address of the next byte; next - cn is line-aligned when cn > 0 */
    int cn;               /* bytes waiting in cb */
    unsigned char cb[FL_LINE];
} fl_sw;

FL_INLINE void fl_sw_init(fl_sw *w)
{
    w->next = NULL;
    w->cn = 0;
}

/* the waiting bytes of an incomplete line, by normal stores */
FL_INLINE void fl_sw_flush(fl_sw *w)
{
    if (w->cn > 0)
        memcpy(w->next - w->cn, w->cb, (size_t)w->cn);
    w->cn = 0;
}

FL_INLINE void fl_sw_end(fl_sw *w)
{
    fl_sw_flush(w);
    _mm_sfence();
}

/* fl_sw_put_VAR(w, dst, src, n): n bytes of src to dst */
#define FL_SW_PUT(VARIANT, ATTR)                                                                       \
    FL_INLINE ATTR void fl_sw_put_##VARIANT(fl_sw *w, void *dst, const void *src, size_t n)            \
    {                                                                                                  \
        const unsigned char *s = src;                                                                  \
        if ((unsigned char *)dst != w->next) {                                                         \
            fl_sw_flush(w);                                                                            \
            w->next = dst;                                                                             \
        }                                                                                              \
        if (w->cn == 0) {  /* up to the next line: normal stores */                                    \
            size_t h = (size_t)(-(uintptr_t)w->next & (FL_LINE - 1));                                  \
            h = h < n ? h : n;                                                                         \
            memcpy(w->next, s, h);                                                                     \
            w->next += h;                                                                              \
            s += h;                                                                                    \
            n -= h;                                                                                    \
        } else {  /* complete the waiting line */                                                      \
            size_t k = (size_t)(FL_LINE - w->cn);                                                      \
            k = k < n ? k : n;                                                                         \
            memcpy(w->cb + w->cn, s, k);                                                               \
            w->cn += (int)k;                                                                           \
            w->next += k;                                                                              \
            s += k;                                                                                    \
            n -= k;                                                                                    \
            if (w->cn < FL_LINE)                                                                       \
                return;                                                                                \
            fl_nt_line_##VARIANT(w->next - FL_LINE, w->cb);                                            \
            w->cn = 0;                                                                                 \
        }                                                                                              \
        for (; n >= FL_LINE; n -= FL_LINE, s += FL_LINE, w->next += FL_LINE)                           \
            fl_nt_line_##VARIANT(w->next, s);                                                          \
        if (n > 0) {                                                                                   \
            memcpy(w->cb, s, n);                                                                       \
            w->cn = (int)n;                                                                            \
            w->next += n;                                                                              \
        }                                                                                              \
    }
FL_SW_PUT(base, )
#ifdef FL_MULTI_ISA
FL_SW_PUT(v3, FL_ATTR_V3)
FL_SW_PUT(v4, FL_ATTR_V4)
#endif
#undef FL_SW_PUT

#else /* not x86-64: plain stores (calls never stream here; these keep the callers' code one) */
typedef struct {
    int unused;
} fl_sw;
FL_INLINE void fl_sw_init(fl_sw *w) { w->unused = 0; }
FL_INLINE void fl_sw_end(fl_sw *w) { (void)w; }
FL_INLINE void fl_sw_put_base(fl_sw *w, void *dst, const void *src, size_t n)
{
    (void)w;
    memcpy(dst, src, n);
}
#endif /* x86-64 */

#endif
