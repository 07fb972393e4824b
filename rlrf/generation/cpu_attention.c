/* Decode-step attention over a shared prompt KV, for bf16 on CPUs with AVX-512 BF16.
 *
 * One call computes, for every live row r (one sampled sequence) and query head:
 *     softmax(scale * q . [prompt keys of r's prompt | r's own generated keys]) @ [values]
 * in one pass per (prompt, kv head): the prompt's keys and values are read once for all of its
 * rows' queries, the scores never leave a thread-local buffer, and the softmax is exact float32
 * (torch's path rounds the scores and probabilities to bf16 and spends most of its time in small
 * batched matmuls and elementwise passes: bench/README.md).
 *
 * Layouts (all contiguous, bf16 as uint16):
 *   q          (R, H, D)                 queries of this step, H = Hkv * g
 *   prefix_kt  (P, Hkv, D/2, Lp, 2)      prompt keys, pairs of dimensions interleaved for vdpbf16ps
 *   prefix_v   (P, Hkv, Lp, D)           prompt values
 *   start      (P)                       first real prompt position (left padding before it)
 *   suffix_kt  (R, Hkv, D/2, cap, 2)     generated keys of each row, positions [0, t) filled
 *   suffix_v   (R, Hkv, cap, D)          generated values of each row
 *   offsets    (P + 1)                   rows of prompt p are [offsets[p], offsets[p+1]) (rows grouped by prompt)
 *   out        (R, H, D)
 * D must be 64 or 128.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define QK_MAX 12 /* queries per score tile (12 accumulators + 1 key register) */
#define PV_MAX 6  /* queries per value tile at D = 64 (6 x 4 accumulators) */

#define INLINE static inline __attribute__((always_inline))

/* exp(x) for x <= 0, Cephes' single-precision polynomial with a two-step ln 2 reduction */
INLINE __m512 exp_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

INLINE __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }

/* scores[i][j0 + 0..15] = scale * q_i . k_j for NQ queries and up to 16 keys; kt is (D/2, ld, 2) */
INLINE void qk_tile(const int NQ, const int D2, const uint32_t *const *q, const uint32_t *kt, long ld, int j0, int n,
                    float *const *scores, float scale) {
    __m512 acc[QK_MAX];
    for (int i = 0; i < NQ; i++) acc[i] = _mm512_setzero_ps();
    const __mmask16 m = tail_mask(n);
    for (int d2 = 0; d2 < D2; d2++) {
        __m512i k = _mm512_maskz_loadu_epi32(m, kt + d2 * ld + j0);
        for (int i = 0; i < NQ; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi32((int)q[i][d2]), (__m512bh)k);
    }
    const __m512 s = _mm512_set1_ps(scale);
    for (int i = 0; i < NQ; i++) _mm512_mask_storeu_ps(scores[i] + j0, m, _mm512_mul_ps(acc[i], s));
}

static void qk(int nq, int D2, const uint32_t *const *q, const uint32_t *kt, long ld, int from, int to,
               float *const *scores, float scale) {
    for (int j = from; j < to; j += 16) {
        int n = to - j;
#define QK_CASE(N) case N: qk_tile(N, D2, q, kt, ld, j, n, scores, scale); break;
        switch (nq) {
            QK_CASE(1) QK_CASE(2) QK_CASE(3) QK_CASE(4) QK_CASE(5) QK_CASE(6)
            QK_CASE(7) QK_CASE(8) QK_CASE(9) QK_CASE(10) QK_CASE(11) QK_CASE(12)
        }
#undef QK_CASE
    }
}

INLINE __m512 bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* acc[i][:] += sum_j probs[i][j] * v[j][:] for j in [from, to); v rows of DC*16 bf16 */
INLINE void pv_tile(const int NQ, const int DC, const float *const *probs, const uint16_t *v, int from, int to,
                    float *const *acc) {
    __m512 a[PV_MAX][8];
    for (int i = 0; i < NQ; i++)
        for (int c = 0; c < DC; c++) a[i][c] = _mm512_loadu_ps(acc[i] + 16 * c);
    for (int j = from; j < to; j++) {
        __m512 vv[8];
        for (int c = 0; c < DC; c++) vv[c] = bf16x16(v + (long)j * DC * 16 + 16 * c);
        for (int i = 0; i < NQ; i++) {
            __m512 p = _mm512_set1_ps(probs[i][j]);
            for (int c = 0; c < DC; c++) a[i][c] = _mm512_fmadd_ps(p, vv[c], a[i][c]);
        }
    }
    for (int i = 0; i < NQ; i++)
        for (int c = 0; c < DC; c++) _mm512_storeu_ps(acc[i] + 16 * c, a[i][c]);
}

static void pv(int nq, int DC, const float *const *probs, const uint16_t *v, int from, int to, float *const *acc) {
    /* at D = 128 two accumulator sets of 8 would not fit the 32 registers: 3 queries a tile */
    const int tile = DC == 4 ? PV_MAX : 3;
    for (int i = 0; i < nq; i += tile) {
        int k = nq - i < tile ? nq - i : tile;
#define PV_CASE(N) case N: if (DC == 4) pv_tile(N, 4, probs + i, v, from, to, acc + i); \
                           else pv_tile(N > 3 ? 3 : N, 8, probs + i, v, from, to, acc + i); break;
        switch (k) { PV_CASE(1) PV_CASE(2) PV_CASE(3) PV_CASE(4) PV_CASE(5) PV_CASE(6) }
#undef PV_CASE
    }
}

/* exp(s[j] - max) in place over [from, to) (float32); returns 1 / their sum */
static float softmax_row(float *s, int from, int to) {
    __m512 mx = _mm512_set1_ps(-3.0e38f);
    for (int j = from; j < to; j += 16) {
        const __mmask16 k = tail_mask(to - j);
        mx = _mm512_mask_max_ps(mx, k, _mm512_maskz_loadu_ps(k, s + j), mx);
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int j = from; j < to; j += 16) {
        const __mmask16 k = tail_mask(to - j);
        __m512 e = _mm512_maskz_mov_ps(k, exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), m)));
        _mm512_mask_storeu_ps(s + j, k, e);
        sum = _mm512_add_ps(sum, e);
    }
    return 1.0f / _mm512_reduce_add_ps(sum);
}

INLINE void store_row(uint16_t *o, const float *acc, float inv, int DC) {
    const __m512 f = _mm512_set1_ps(inv);
    for (int c = 0; c < DC; c++)
        _mm256_storeu_si256((__m256i *)(o + 16 * c), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(acc + 16 * c), f)));
}

/* One (prompt, kv head): its rows' queries against the prompt and their own generated tokens. */
static void attend(int p, int h, const uint16_t *q, const uint16_t *prefix_kt, const uint16_t *prefix_v,
                   const int64_t *start, const uint16_t *suffix_kt, const uint16_t *suffix_v, const int64_t *offsets,
                   uint16_t *out, int Hkv, int g, int D, int Lp, int cap, int t, float scale, float *buf) {
    const int r0 = (int)offsets[p], nr = (int)(offsets[p + 1] - offsets[p]);
    if (nr <= 0) return;
    const int H = Hkv * g, D2 = D / 2, DC = D / 16, width = Lp + t, s0 = (int)start[p];
    const int nq = nr * g;
    /* buf: nq rows of scores (width, padded to 16) then nq rows of D accumulators */
    const int sw = (width + 15) & ~15;
    float *scores[64], *acc[64];
    const uint32_t *qs[64];
    for (int i = 0; i < nq; i++) {
        const int row = r0 + i / g, head = h * g + i % g;
        qs[i] = (const uint32_t *)(q + ((long)row * H + head) * D);
        scores[i] = buf + (long)i * sw;
        acc[i] = buf + (long)nq * sw + (long)i * D;
        memset(acc[i], 0, sizeof(float) * D);
    }
    const long pb = ((long)p * Hkv + h);
    const uint32_t *pkt = (const uint32_t *)(prefix_kt + pb * D * Lp);
    const uint16_t *pvv = prefix_v + pb * Lp * D;
    /* prompt scores for all queries of the prompt, QK_MAX at a time */
    for (int i = 0; i < nq; i += QK_MAX) {
        int k = nq - i < QK_MAX ? nq - i : QK_MAX;
        qk(k, D2, qs + i, pkt, Lp, s0, Lp, scores + i, scale);
    }
    /* each row's generated-token scores, written after the prompt's in the same score row */
    for (int a = 0; a < nr; a++) {
        const long sb = ((long)(r0 + a) * Hkv + h);
        const uint32_t *skt = (const uint32_t *)(suffix_kt + sb * D * cap);
        float *shifted[64];
        for (int b = 0; b < g; b++) shifted[b] = scores[a * g + b] + Lp;
        qk(g, D2, qs + a * g, skt, cap, 0, t, shifted, scale);
    }
    float inv[64];
    for (int i = 0; i < nq; i++) inv[i] = softmax_row(scores[i], s0, width);
    /* values: the prompt's for all queries, then each row's own */
    pv(nq, DC, (const float *const *)scores, pvv, s0, Lp, acc);
    for (int a = 0; a < nr; a++) {
        const long sb = ((long)(r0 + a) * Hkv + h);
        const float *shifted[64];
        for (int b = 0; b < g; b++) shifted[b] = scores[a * g + b] + Lp;
        pv(g, DC, shifted, suffix_v + sb * cap * D, 0, t, acc + a * g);
    }
    for (int i = 0; i < nq; i++)
        store_row(out + ((long)(r0 + i / g) * H + h * g + i % g) * D, acc[i], inv[i], DC);
}

/* Returns 0, or -1 when the shapes are outside what the kernel handles (the caller falls back). */
int rlrf_decode_attention(const uint16_t *q, const uint16_t *prefix_kt, const uint16_t *prefix_v, const int64_t *start,
                          const uint16_t *suffix_kt, const uint16_t *suffix_v, const int64_t *offsets, uint16_t *out,
                          int P, int Hkv, int g, int D, int Lp, int cap, int t, float scale) {
    if ((D != 64 && D != 128) || g < 1 || t < 0 || t > cap) return -1;
    int max_rows = 0;
    for (int p = 0; p < P; p++) {
        int n = (int)(offsets[p + 1] - offsets[p]);
        if (n > max_rows) max_rows = n;
    }
    if (max_rows * g > 64) return -1;
    const long per_task = (long)max_rows * g * (((Lp + t + 15) & ~15) + D);
#pragma omp parallel
    {
        float *buf = (float *)aligned_alloc(64, ((sizeof(float) * per_task + 63) / 64) * 64 + 64);
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < P * Hkv; task++)
            attend(task / Hkv, task % Hkv, q, prefix_kt, prefix_v, start, suffix_kt, suffix_v, offsets, out, Hkv, g, D,
                   Lp, cap, t, scale, buf);
        free(buf);
    }
    return 0;
}

/* Prefill: causal attention of each prompt over its own real positions (left padding skipped; the
 * padded positions' outputs are zero). q (B, H, L, D), kt (B, Hkv, D/2, L, 2), v (B, Hkv, L, D),
 * start (B), out (B, L, H, D). One task = one (prompt, kv head, block of positions): the block's
 * positions x g heads (at most QK_MAX queries) share one pass over the keys up to its last position. */
int rlrf_prefill_attention(const uint16_t *q, const uint16_t *kt, const uint16_t *v, const int64_t *start,
                           uint16_t *out, int B, int Hkv, int g, int D, int L, float scale) {
    if ((D != 64 && D != 128) || g < 1 || g > QK_MAX) return -1;
    const int H = Hkv * g, D2 = D / 2, DC = D / 16, per = QK_MAX / g, blocks = (L + per - 1) / per;
    const long per_task = (long)QK_MAX * (((L + 15) & ~15) + D);
#pragma omp parallel
    {
        float *buf = (float *)aligned_alloc(64, ((sizeof(float) * per_task + 63) / 64) * 64 + 64);
        /* last blocks first: they are the longest (causal), so the dynamic schedule balances */
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < B * Hkv * blocks; task++) {
            const int blk = blocks - 1 - task % blocks, bh = task / blocks, b = bh / Hkv, h = bh % Hkv;
            const int s0 = (int)start[b], p0 = blk * per, p1 = p0 + per < L ? p0 + per : L;
            for (int pos = p0; pos < (s0 < p1 ? s0 : p1); pos++)  /* padding: zero output */
                for (int i = 0; i < g; i++) memset(out + (((long)b * L + pos) * H + h * g + i) * D, 0, 2 * D);
            const int first = p0 > s0 ? p0 : s0;
            if (first >= p1) continue;
            const int nq = (p1 - first) * g, sw = (L + 15) & ~15;
            float *scores[QK_MAX], *acc[QK_MAX], inv[QK_MAX];
            const uint32_t *qs[QK_MAX];
            for (int i = 0; i < nq; i++) {
                const int pos = first + i / g, head = h * g + i % g;
                qs[i] = (const uint32_t *)(q + (((long)b * H + head) * L + pos) * D);
                scores[i] = buf + (long)i * sw;
                acc[i] = buf + (long)QK_MAX * sw + (long)i * D;
                memset(acc[i], 0, sizeof(float) * D);
            }
            const long kb = (long)b * Hkv + h;
            qk(nq, D2, qs, (const uint32_t *)(kt + kb * D * L), L, s0, p1, scores, scale);
            for (int i = 0; i < nq; i++) {
                const int end = first + i / g + 1;  /* causal: positions [s0, end) */
                inv[i] = softmax_row(scores[i], s0, end);
                for (int j = end; j < p1; j++) scores[i][j] = 0.0f;
            }
            pv(nq, DC, (const float *const *)scores, v + kb * L * D, s0, p1, acc);
            for (int i = 0; i < nq; i++)
                store_row(out + (((long)b * L + first + i / g) * H + h * g + i % g) * D, acc[i], inv[i], DC);
        }
        free(buf);
    }
    return 0;
}
