/* Native kernel of the ladder sampler (mcel/faults/ladder.py), built on first use by
 * mcel/faults/native.py.
 *
 * It draws exactly what the numpy code draws, from the same PCG64 states: Poisson counts
 * come from numpy's own random_poisson (linked from numpy's libnpyrandom), uniform cells
 * and times from an inlined copy of PCG64 and numpy's bounded-integer method, so every
 * mask is bit-identical to the numpy path (tests compare them key by key). It saves
 * numpy's per-call overhead and temporaries: drawing, filtering, deduplicating, grouping
 * bits into per-code XOR words and XORing them in happen in two passes. The sort in
 * between is numpy's (SIMD, faster than a plain C sort here).
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "numpy/random/bitgen.h"

int64_t random_poisson(bitgen_t *g, double lam);
void random_bounded_uint64_fill(bitgen_t *g, uint64_t off, uint64_t rng, intptr_t cnt,
                                bool use_masked, uint64_t *out);

/* numpy's PCG64 (XSL-RR 128/64), inlined: the same outputs as the numpy generator whose
 * state it starts from (numpy.random.PCG64.state), several times faster than calling it
 * through bitgen_t per draw. native.py checks it against numpy before first use. */
typedef struct {
    __uint128_t state, inc;
    int has32;     /* next_uint32 hands out the high half of a 64-bit draw it kept */
    uint32_t buf;
} pcg_t;

#define PCG_MULT (((__uint128_t)UINT64_C(2549297995355413924) << 64) | \
                  UINT64_C(4865540595714422341))

static inline uint64_t pcg_next64(pcg_t *g) {
    g->state = g->state * PCG_MULT + g->inc;
    uint64_t x = (uint64_t)(g->state >> 64) ^ (uint64_t)g->state;
    unsigned rot = (unsigned)(g->state >> 122);
    return (x >> rot) | (x << ((64 - rot) & 63));
}

static inline uint32_t pcg_next32(pcg_t *g) {
    if (g->has32) {
        g->has32 = 0;
        return g->buf;
    }
    uint64_t x = pcg_next64(g);
    g->has32 = 1;
    g->buf = (uint32_t)(x >> 32);
    return (uint32_t)x;
}

/* LCG jump ahead by delta steps in O(log delta) (Brown 1994), as PCG64.advance. */
static void pcg_advance(pcg_t *g, uint64_t delta) {
    __uint128_t mult = PCG_MULT, plus = g->inc, acc_mult = 1, acc_plus = 0;
    for (; delta; delta >>= 1) {
        if (delta & 1) {
            acc_mult *= mult;
            acc_plus = acc_plus * mult + plus;
        }
        plus = (mult + 1) * plus;
        mult *= mult;
    }
    g->state = acc_mult * g->state + acc_plus;
}

static uint64_t bg_next64(void *s) { return pcg_next64(s); }
static uint32_t bg_next32(void *s) { return pcg_next32(s); }
static double bg_next_double(void *s) { return (double)(pcg_next64(s) >> 11) * 0x1p-53; }

/* words: state high, state low, inc high, inc low, has_uint32, uinteger */
static pcg_t pcg_from(const uint64_t *w) {
    pcg_t g;
    g.state = ((__uint128_t)w[0] << 64) | w[1];
    g.inc = ((__uint128_t)w[2] << 64) | w[3];
    g.has32 = (int)w[4];
    g.buf = (uint32_t)w[5];
    return g;
}

/* numpy's Lemire draw of a uniform integer in [0, rng] (rng < 2^32 - 1). */
static inline uint32_t bounded32(pcg_t *g, uint32_t rng) {
    const uint32_t excl = rng + 1;
    uint64_t m = (uint64_t)pcg_next32(g) * excl;
    uint32_t left = (uint32_t)m;
    if (left < excl) {
        const uint32_t threshold = (UINT32_MAX - rng) % excl;
        while (left < threshold) {
            m = (uint64_t)pcg_next32(g) * excl;
            left = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

/* First words of the stream from state words w (the self-check against numpy):
 * out[0..k) = next64, then out[k..2k) = next32, then out[2k] = a bounded draw in
 * [0, rng], then out[2k+1] = next64 after advance(delta). */
void mcel_pcg_check(const uint64_t *w, int32_t k, uint32_t rng, uint64_t delta, uint64_t *out) {
    pcg_t g = pcg_from(w);
    for (int32_t i = 0; i < k; i++) out[i] = pcg_next64(&g);
    for (int32_t i = 0; i < k; i++) out[k + i] = pcg_next32(&g);
    out[2 * k] = rng == UINT32_MAX ? pcg_next32(&g) : bounded32(&g, rng);
    pcg_advance(&g, delta);
    out[2 * k + 1] = pcg_next64(&g);
}

/* Cell positions are uint32 when n <= 2^32 (half the memory traffic), else uint64. */

static inline void set_pos(void *pos, bool wide, int64_t i, uint64_t v) {
    if (wide) ((uint64_t *)pos)[i] = v;
    else ((uint32_t *)pos)[i] = (uint32_t)v;
}

/* Bit position p -> (code, bit in code); sh = log2(bits) when bits is a power of two
 * (a shift instead of a division), else -1. */
static inline uint64_t code_of(uint64_t p, int sh, uint64_t b) { return sh >= 0 ? p >> sh : p / b; }
static inline uint64_t bit_of(uint64_t p, int sh, uint64_t b) { return sh >= 0 ? p & (b - 1) : p % b; }

static int log2_exact(int32_t bits) {
    for (int sh = 0; sh < 63; sh++)
        if ((INT64_C(1) << sh) == bits) return sh;
    return -1;
}

static uint64_t load_code(const void *codes, int32_t elem, uint64_t i) {
    switch (elem) {
        case 1: return ((const uint8_t *)codes)[i];
        case 2: return ((const uint16_t *)codes)[i];
        case 4: return ((const uint32_t *)codes)[i];
        default: return ((const uint64_t *)codes)[i];
    }
}

#define PREFETCH 32 /* codes ahead: sorted indices are too far apart for the hardware */

static void xor_words(void *codes, int32_t elem, const int64_t *idx, const void *xw,
                      int64_t count) {
#define XOR_LOOP(T)                                                               \
    {                                                                             \
        T *c = codes;                                                             \
        const T *x = xw;                                                          \
        for (int64_t i = 0; i < count; i++) {                                     \
            if (i + PREFETCH < count) __builtin_prefetch(c + idx[i + PREFETCH], 1); \
            c[idx[i]] ^= x[i];                                                    \
        }                                                                         \
    }
    switch (elem) {
        case 1: XOR_LOOP(uint8_t) break;
        case 2: XOR_LOOP(uint16_t) break;
        case 4: XOR_LOOP(uint32_t) break;
        default: XOR_LOOP(uint64_t) break;
    }
#undef XOR_LOOP
}

/* XOR words xw[i] into codes[idx[i]] (indices unique) after checking every index lies
 * in [0, size): returns 0, or -1 with the codes untouched. */
int32_t mcel_xor(void *codes, int32_t elem, int64_t size, const int64_t *idx, const void *xw,
                 int64_t count) {
    for (int64_t i = 0; i < count; i++)
        if (idx[i] < 0 || idx[i] >= size) return -1;
    xor_words(codes, elem, idx, xw, count);
    return 0;
}

/* The ladder's flips below the rate: their bit positions, unsorted, in pos (uint32
 * when n <= 2^32, else uint64); returns how many, or -1 past cap (the caller falls back
 * to numpy).
 *
 * Per block j, from the marks stream (state words mw): a Poisson(lam[j]) count (numpy's
 * random_poisson), then that many uniform cells of range(n), drawn as uint32 when
 * n <= 2^32 (as the numpy code asks). A timed block also draws one time per mark from
 * the times stream (tw); the two streams are independent, so drawing both in one loop
 * gives the numpy path's numbers while their latencies overlap.
 * mode 0, one rate: blocks before timed_from lie below the rate (every mark hits, and
 *   the times stream skips their marks, as PCG64.advance does in numpy); later blocks
 *   (at most the last) keep a mark iff its 53-bit uniform is < k_top. Bit positions set
 *   in prot are dropped.
 * mode 1, a rate per bit position: every block is timed; a mark hits iff
 *   ta + (tb - ta) u < table[bit] (protected positions have time 0: never).
 * mode 2, a rate per stored value and position: iff ... < table[stored * bits + bit],
 *   the stored bit read from codes.
 */
int64_t mcel_flips(const uint64_t *mw, const uint64_t *tw, uint64_t n, const double *lam,
                   const double *ta, const double *tb, int32_t nblocks, int32_t mode,
                   int32_t timed_from, uint64_t k_top, const double *table, int32_t bits,
                   uint64_t prot, const void *codes, int32_t elem, void *pos,
                   int64_t cap) {
    pcg_t mg = pcg_from(mw), tg = pcg_from(tw);
    bitgen_t bg = {&mg, bg_next64, bg_next32, bg_next_double, bg_next64};
    const bool wide = n > (UINT64_C(1) << 32);
    const uint32_t rng32 = (uint32_t)(n - 1);
    const uint64_t b = (uint64_t)bits;
    const int sh = log2_exact(bits);
    uint64_t skipped = 0;
    int64_t drawn = 0, w = 0;
    uint64_t *wide_buf = wide ? (uint64_t *)pos : NULL;
    for (int32_t j = 0; j < nblocks; j++) {
        int64_t m = random_poisson(&bg, lam[j]);
        if (m == 0) continue;
        if (m > cap - drawn) return -1;
        drawn += m;
        const bool timed = mode != 0 || j >= timed_from;
        if (!timed) skipped += (uint64_t)m;
        else if (skipped) {
            pcg_advance(&tg, skipped);
            skipped = 0;
        }
        int64_t base = w;
        if (wide) {  /* rare (over 2^32 bit positions): numpy's own fill, then filter */
            random_bounded_uint64_fill(&bg, 0, n - 1, m, false, wide_buf + base);
        }
        const double lo = ta[j], width = tb[j] - ta[j];
        /* every mark is written and counted only if kept (a branch on the coin flip
         * would mispredict at random); w <= base + i, so the wide buffer is compacted
         * in place */
        if (mode == 0 && !wide && rng32 != 0 && rng32 != UINT32_MAX) {
            /* the common case in a loop of its own: the compiler does not specialise
             * the general one below, and this one draws 1.3x faster */
            uint32_t *p32 = pos;
            for (int64_t i = 0; i < m; i++) {
                const uint32_t p = bounded32(&mg, rng32);
                bool keep = timed ? (pcg_next64(&tg) >> 11) < k_top : true;
                keep &= !((prot >> bit_of(p, sh, b)) & 1);
                p32[w] = p;
                w += keep;
            }
            continue;
        }
        for (int64_t i = 0; i < m; i++) {
            uint64_t p;
            if (wide) p = wide_buf[base + i];
            else if (rng32 == 0) p = 0;  /* one cell: numpy draws nothing */
            else p = rng32 == UINT32_MAX ? pcg_next32(&mg) : bounded32(&mg, rng32);
            bool keep = true;
            if (timed) {
                const uint64_t u53 = pcg_next64(&tg) >> 11;
                if (mode == 0) {
                    keep = u53 < k_top;
                } else {
                    const uint64_t bit = bit_of(p, sh, b);
                    uint64_t row = 0;
                    if (mode == 2) row = (load_code(codes, elem, code_of(p, sh, b)) >> bit) & 1;
                    const double t = lo + width * ((double)u53 * 0x1p-53);
                    keep = t < table[row * b + bit];
                }
            }
            if (prot) keep &= !((prot >> bit_of(p, sh, b)) & 1);
            set_pos(pos, wide, w, p);
            w += keep;
        }
    }
    return w;
}

/* Sorted marks pos[0..w) -> distinct bits grouped per code: idx[0..k) (flat code
 * indices, ascending) and xw[0..k) (words of elem bytes), XORed into codes in the same
 * pass when apply (each code once it is complete).
 * Returns k; *nbits = distinct bits. */
int64_t mcel_group(const void *pos, int32_t wide, int64_t w, int32_t bits, void *codes,
                   int32_t elem, int32_t apply, int64_t *idx, void *xw, int64_t *nbits) {
    const uint64_t b = (uint64_t)bits;
    const int sh = log2_exact(bits);
    int64_t k = 0, nb = 0;
#define GROUP_LOOP(T, POS)                                                     \
    {                                                                          \
        const POS *ps = pos;                                                   \
        T *x = xw, *c = codes;                                                 \
        uint64_t prev = UINT64_MAX;                                            \
        for (int64_t i = 0; i < w; i++) {                                      \
            const uint64_t p = ps[i];                                          \
            if (p == prev) continue; /* a bit hit by two marks flips once */   \
            prev = p;                                                          \
            nb++;                                                              \
            const int64_t code = (int64_t)code_of(p, sh, b);                   \
            const T bitv = (T)(UINT64_C(1) << bit_of(p, sh, b));               \
            if (k > 0 && idx[k - 1] == code) {                                 \
                x[k - 1] |= bitv;                                              \
                continue;                                                      \
            }                                                                  \
            if (apply) { /* the previous code is complete */                   \
                if (k > 0) c[idx[k - 1]] ^= x[k - 1];                          \
                if (i + PREFETCH < w)                                          \
                    __builtin_prefetch(c + code_of(ps[i + PREFETCH], sh, b), 1); \
            }                                                                  \
            idx[k] = code;                                                     \
            x[k++] = bitv;                                                     \
        }                                                                      \
        if (apply && k > 0) c[idx[k - 1]] ^= x[k - 1];                         \
    }
#define GROUP_ANY(T)                                                           \
    if (wide) GROUP_LOOP(T, uint64_t)                                          \
    else GROUP_LOOP(T, uint32_t)
    switch (elem) {
        case 1: GROUP_ANY(uint8_t) break;
        case 2: GROUP_ANY(uint16_t) break;
        case 4: GROUP_ANY(uint32_t) break;
        default: GROUP_ANY(uint64_t) break;
    }
#undef GROUP_ANY
#undef GROUP_LOOP
    *nbits = nb;
    return k;
}

/* One group of an error map's cells (mcel/faults/error_map.py, _flip_cells): the marks
 * pos[0..w) of the group's ladder (indices into its cells, uint32 or uint64) thinned to
 * each cell's own rate: cell = cells[pos[i]] is kept iff the 53-bit uniform of
 * SplitMix64(cell ^ salt) is < ratio[pos[i]], as error_map._uniform_of draws it (both
 * arrays read every `stride` words: 2 when they interleave, so that a candidate costs
 * one cache line, not two). Kept cells go to out (unsorted, a cell marked twice twice);
 * returns how many. */
#define THIN_AHEAD 16

/* The keep test of a candidate cell (error_map._uniform_of): the 53-bit uniform of
 * SplitMix64(cell ^ salt) below its ratio. */
static inline bool kept(int64_t cell, uint64_t salt, double ratio) {
    uint64_t x = (uint64_t)cell ^ salt;
    x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
    x = (x ^ (x >> 31)) >> 11;
    return (double)x * 0x1p-53 < ratio;
}

int64_t mcel_thin(const void *pos, int32_t wide, int64_t w, const int64_t *cells,
                  const double *ratio, int64_t stride, uint64_t salt, int64_t *out) {
    int64_t k = 0;
    for (int64_t i = 0; i < w; i++) {
        const uint64_t j = wide ? ((const uint64_t *)pos)[i] : ((const uint32_t *)pos)[i];
#if defined(__GNUC__)
        /* the reads are ascending but far apart (a cache miss each): ask for them
         * THIN_AHEAD candidates early, so that many misses are in flight at once */
        if (i + THIN_AHEAD < w) {
            const uint64_t a = wide ? ((const uint64_t *)pos)[i + THIN_AHEAD]
                                    : ((const uint32_t *)pos)[i + THIN_AHEAD];
            __builtin_prefetch(cells + a * stride);
            __builtin_prefetch(ratio + a * stride);
        }
#endif
        const int64_t cell = cells[j * stride];
        out[k] = cell;
        k += kept(cell, salt, ratio[j * stride]);
    }
    return k;
}

/* The part of the ladder above 1/16 (ladder.py, the dense loop): after the times stream
 * (state words tw) skips `skip` draws, one 64-bit draw per cell i of range(n); cell i
 * is hit iff its 53-bit uniform is < thr = (top - 1/16) / (15/16). Hit cells go to out
 * in ascending order (cells that also carry a mark below 1/16 included: the caller
 * takes the union); returns how many. */
int64_t mcel_dense(const uint64_t *tw, uint64_t skip, uint64_t n, double thr, int64_t *out) {
    pcg_t tg = pcg_from(tw);
    pcg_advance(&tg, skip);
    int64_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        const double u = (double)(pcg_next64(&tg) >> 11) * 0x1p-53;
        out[k] = (int64_t)i;
        k += u < thr;
    }
    return k;
}

/* The set bits of bitmap[0..nwords) as ascending positions into out, each word zeroed
 * as it is read; returns how many. */
static int64_t bitmap_drain(uint64_t *bitmap, int64_t nwords, int64_t *out) {
    int64_t k = 0;
    for (int64_t wd = 0; wd < nwords; wd++) {
        uint64_t b = bitmap[wd];
        if (!b)
            continue;
        bitmap[wd] = 0;
        while (b) {
            out[k++] = wd * 64 + __builtin_ctzll(b);
            b &= b - 1;
        }
    }
    return k;
}

/* error_map._seeded: the PCG64 state numpy's PCG64 takes from four seed words (two LCG
 * steps from 0, the seed added in between), in pcg_from's word layout. */
static void pcg_seeded(const uint64_t *seed, uint64_t *w) {
    const __uint128_t init = ((__uint128_t)seed[0] << 64) | seed[1];
    const __uint128_t inc = ((((__uint128_t)seed[2] << 64) | seed[3]) << 1) | 1;
    const __uint128_t state = (inc + init) * PCG_MULT + inc;
    w[0] = (uint64_t)(state >> 64);
    w[1] = (uint64_t)state;
    w[2] = (uint64_t)(inc >> 64);
    w[3] = (uint64_t)inc;
    w[4] = w[5] = 0;
}

/* The keep test for the candidate j of interleaved (cell, ratio) pairs, the cell set in
 * bitmap when kept (no branch on the coin). */
static inline void thin_to_bitmap(const int64_t *pairs, uint64_t j, uint64_t salt,
                                  uint64_t *bitmap) {
    const int64_t cell = pairs[2 * j];
    double ratio;
    memcpy(&ratio, pairs + 2 * j + 1, sizeof ratio);
    bitmap[cell >> 6] |= (uint64_t)kept(cell, salt, ratio) << (cell & 63);
}

/* a[0..m), all <= top, sorted ascending by LSD radix sort on 11-bit digits (as many
 * passes as top needs: two for groups up to 4M cells); tmp: scratch of m. */
static void radix_sort32(uint32_t *a, uint32_t *tmp, int64_t m, uint32_t top) {
    static const int DIGIT = 11;
    int64_t count[1 << 11];
    for (int shift = 0; shift < 32 && (top >> shift); shift += DIGIT) {
        memset(count, 0, sizeof count);
        for (int64_t i = 0; i < m; i++)
            count[(a[i] >> shift) & 2047]++;
        int64_t sum = 0;
        for (int d = 0; d < 2048; d++) {
            const int64_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (int64_t i = 0; i < m; i++)
            tmp[count[(a[i] >> shift) & 2047]++] = a[i];
        memcpy(a, tmp, (size_t)m * sizeof *a);
    }
}

/* A fresh draw of an error map, every group in one call (error_map._flip_cells with
 * FRESH_GROUP): group g's ladder (mcel_flips, mode 0; plus mcel_dense above 1/16) from
 * the PCG64 states seeded by seeds[9g .. 9g+8), thinned with salt seeds[9g+8] as
 * mcel_thin does, the kept cells set in bitmap (nwords words, zero on entry and on
 * return) and read back sorted and unique into out. Per group: addr[4g..] = addresses
 * of its plan's lam, ta, tb and of its (cell, ratio) pairs; ints[4g..] = cells, blocks,
 * timed_from, k_top; thr[g] = the dense threshold, < 0 below 1/16. buf and tmp (cap
 * uint32 each) and above (int64, the largest dense group's size) are scratch. Returns
 * how many cells, or -1 when a group's marks overflow buf (the caller then draws group
 * by group). */
int64_t mcel_map_draw(int32_t ngroups, const uint64_t *seeds, const uint64_t *addr,
                      const uint64_t *ints, const double *thr, uint32_t *buf, uint32_t *tmp,
                      int64_t cap, int64_t *above, uint64_t *bitmap, int64_t nwords, int64_t *out) {
    const double none = 0.0;
    for (int32_t g = 0; g < ngroups; g++) {
        uint64_t mw[6], tw[6];
        pcg_seeded(seeds + 9 * g, mw);
        pcg_seeded(seeds + 9 * g + 4, tw);
        const uint64_t salt = seeds[9 * g + 8], n = ints[4 * g];
        const int64_t *pairs = (const int64_t *)(uintptr_t)addr[4 * g + 3];
        const int64_t w = mcel_flips(mw, tw, n, (const double *)(uintptr_t)addr[4 * g],
                                     (const double *)(uintptr_t)addr[4 * g + 1],
                                     (const double *)(uintptr_t)addr[4 * g + 2],
                                     (int32_t)ints[4 * g + 1], 0, (int32_t)ints[4 * g + 2],
                                     ints[4 * g + 3], &none, 1, 0, &none, 8, buf, cap);
        if (w < 0) {
            memset(bitmap, 0, (size_t)nwords * sizeof *bitmap);  /* zero for the next call */
            return -1;
        }
        /* ascending marks: the reads of the pairs and the writes to the bitmap sweep
         * memory once instead of missing the cache at random */
        radix_sort32(buf, tmp, w, (uint32_t)(n - 1));
        for (int64_t i = 0; i < w; i++) {
#if defined(__GNUC__)
            if (i + THIN_AHEAD < w)
                __builtin_prefetch(pairs + 2 * (uint64_t)buf[i + THIN_AHEAD]);
#endif
            thin_to_bitmap(pairs, buf[i], salt, bitmap);
        }
        if (thr[g] >= 0) {
            const int64_t k = mcel_dense(tw, (uint64_t)w, n, thr[g], above);
            for (int64_t i = 0; i < k; i++)
                thin_to_bitmap(pairs, (uint64_t)above[i], salt, bitmap);
        }
    }
    return bitmap_drain(bitmap, nwords, out);
}
