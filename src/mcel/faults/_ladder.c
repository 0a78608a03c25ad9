/* Native kernel of the ladder sampler (mcel/faults/ladder.py), built on first use by
 * mcel/faults/native.py.
 *
 * It draws exactly what the numpy code draws: Poisson counts and uniform cells come from
 * numpy's own random_poisson and random_bounded_uint{32,64}_fill (linked from numpy's
 * libnpyrandom), times from the bit generator's next_raw, so every mask is
 * bit-identical to the numpy path. What it saves is the bookkeeping between draws:
 * filtering, deduplicating, grouping bits into per-code XOR words and XORing them in,
 * without numpy temporaries. The sort in between is numpy's (SIMD, faster than any
 * plain C sort here).
 */
#include <stdbool.h>
#include <stdint.h>

#include "numpy/random/bitgen.h"

int64_t random_poisson(bitgen_t *g, double lam);
void random_bounded_uint32_fill(bitgen_t *g, uint32_t off, uint32_t rng, intptr_t cnt,
                                bool use_masked, uint32_t *out);
void random_bounded_uint64_fill(bitgen_t *g, uint64_t off, uint64_t rng, intptr_t cnt,
                                bool use_masked, uint64_t *out);

/* Cell positions are uint32 when n <= 2^32 (half the memory traffic), else uint64. */
static inline uint64_t get_pos(const void *pos, bool wide, int64_t i) {
    return wide ? ((const uint64_t *)pos)[i] : ((const uint32_t *)pos)[i];
}

static inline void set_pos(void *pos, bool wide, int64_t i, uint64_t v) {
    if (wide) ((uint64_t *)pos)[i] = v;
    else ((uint32_t *)pos)[i] = (uint32_t)v;
}

/* Marks of blocks 0..nblocks-1: per block a Poisson(lam[j]) count, then that many
 * uniform cells of range(n), drawn as uint32 when n <= 2^32 (as the numpy code asks)
 * into pos (uint32 then, else uint64). counts[j] = marks of block j. Returns the
 * total, or -1 when it would exceed cap (the caller falls back to numpy). */
int64_t mcel_marks(bitgen_t *g, uint64_t n, const double *lam, int32_t nblocks, void *pos,
                   int64_t cap, int64_t *counts) {
    const bool wide = n > (UINT64_C(1) << 32);
    int64_t total = 0;
    for (int32_t j = 0; j < nblocks; j++) {
        int64_t m = random_poisson(g, lam[j]);
        counts[j] = m;
        if (m == 0) continue;
        if (m > cap - total) return -1;
        if (wide) random_bounded_uint64_fill(g, 0, n - 1, m, false, (uint64_t *)pos + total);
        else random_bounded_uint32_fill(g, 0, (uint32_t)(n - 1), m, false, (uint32_t *)pos + total);
        total += m;
    }
    return total;
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

#define PREFETCH 16 /* codes ahead: sorted indices are too far apart for the hardware */

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

/* Keep the marks that hit, compacted in place at the front of pos; returns how many.
 *
 * mode 0, one rate: blocks before timed_from lie below the rate (every mark hits);
 *   later blocks (at most the last) keep a mark iff its 53-bit uniform is < k_top. One
 *   raw draw per mark of the timed blocks only: the caller advanced the times stream
 *   past the others. Bit positions set in prot are dropped.
 * mode 1, a rate per bit position: every block is timed; a mark hits iff
 *   ta + (tb - ta) u < table[bit] (protected positions have time 0: never).
 * mode 2, a rate per stored value and position: iff ... < table[stored * bits + bit],
 *   the stored bit read from codes. */
int64_t mcel_keep(bitgen_t *tg, void *pos, int32_t wide, const int64_t *counts,
                  const double *ta, const double *tb, int32_t nblocks, int32_t mode,
                  int32_t timed_from, uint64_t k_top, const double *table, int32_t bits,
                  uint64_t prot, const void *codes, int32_t elem) {
    const uint64_t b = (uint64_t)bits;
    const int sh = log2_exact(bits);
    int64_t r = 0, w = 0;
    for (int32_t j = 0; j < nblocks; j++) {
        const bool timed = mode != 0 || j >= timed_from;
        const double lo = ta[j], width = tb[j] - ta[j];
        for (int64_t e = r + counts[j]; r < e; r++) {
            uint64_t p = get_pos(pos, wide, r);
            if (timed) {
                uint64_t u53 = tg->next_raw(tg->state) >> 11;
                if (mode == 0) {
                    if (u53 >= k_top) continue;
                } else {
                    const uint64_t bit = bit_of(p, sh, b);
                    uint64_t row = 0;
                    if (mode == 2) row = (load_code(codes, elem, code_of(p, sh, b)) >> bit) & 1;
                    double t = lo + width * ((double)u53 * 0x1p-53);
                    if (!(t < table[row * b + bit])) continue;
                }
            }
            if (prot && ((prot >> bit_of(p, sh, b)) & 1)) continue;
            set_pos(pos, wide, w++, p);
        }
    }
    return w;
}

/* Sorted marks pos[0..w) -> distinct bits grouped per code: idx[0..k) (flat code
 * indices, ascending) and xw[0..k) (words of elem bytes), XORed into codes when apply.
 * Returns k; *nbits = distinct bits. */
int64_t mcel_group(const void *pos, int32_t wide, int64_t w, int32_t bits, void *codes,
                   int32_t elem, int32_t apply, int64_t *idx, void *xw, int64_t *nbits) {
    const uint64_t b = (uint64_t)bits;
    const int sh = log2_exact(bits);
    int64_t k = 0, nb = 0;
    uint64_t prev = UINT64_MAX, word = 0;
#define GROUP_LOOP(T)                                                  \
    {                                                                  \
        T *x = xw;                                                     \
        for (int64_t i = 0; i < w; i++) {                              \
            uint64_t p = get_pos(pos, wide, i);                        \
            if (p == prev) continue;                                   \
            prev = p;                                                  \
            nb++;                                                      \
            uint64_t code = code_of(p, sh, b);                         \
            if (k > 0 && (uint64_t)idx[k - 1] == code) {               \
                word |= UINT64_C(1) << bit_of(p, sh, b);               \
            } else {                                                   \
                if (k > 0) x[k - 1] = (T)word;                         \
                idx[k++] = (int64_t)code;                              \
                word = UINT64_C(1) << bit_of(p, sh, b);                \
            }                                                          \
        }                                                              \
        if (k > 0) x[k - 1] = (T)word;                                 \
    }
    switch (elem) {
        case 1: GROUP_LOOP(uint8_t) break;
        case 2: GROUP_LOOP(uint16_t) break;
        case 4: GROUP_LOOP(uint32_t) break;
        default: GROUP_LOOP(uint64_t) break;
    }
#undef GROUP_LOOP
    *nbits = nb;
    if (apply) xor_words(codes, elem, idx, xw, k);
    return k;
}
