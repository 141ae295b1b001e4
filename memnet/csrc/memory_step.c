/* One memory step of memnet.memory.MultiHeadMemoryBank, forward and backward, in C.

   The step reads with the memory as it stands, then writes (MultiHeadMemoryBank.step). Written as
   torch operations it is several hundred small calls per segment, forward and backward, each
   costing microseconds of dispatch for a few thousand flops; here it is one call each way.
   memnet/fused.py holds the contract: which tensors, shapes and configurations, and the
   autograd.Function around these two entry points. The arithmetic follows the torch reference
   operation by operation (the same normalisations, clamps, tie rules and order of the writes), so
   the two agree up to float rounding; tests/test_fused.py checks values and gradients.

   Shapes per batch row: N slots, D slot_dim, L tokens, H heads, K top_k, W writes. Every tensor is
   float32 (int64 for indices, uint8 for masks), batch first, each batch row contiguous; p[i] points
   at row 0 of tensor i and st[i] is its batch stride in elements (a segment's slice of a longer
   sequence is read in place). Rows b0..b1-1 are computed,
   so that callers may split a batch over threads; the outputs of different rows never overlap.
   Returns 0, or 1 when a score was NaN (the caller then takes the torch path). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* dims[] */
enum { DM_N, DM_D, DM_L, DM_H, DM_K, DM_W, DM_WINDOW, DM_DECAY, DM_ALLOC, DM_COUNT };
enum { DECAY_LEARNED, DECAY_FIXED, DECAY_NONE };
enum { ALLOC_LRU, ALLOC_FADED, ALLOC_WEAKEST };
/* floats[] */
enum { FL_EPS, FL_FULL, FL_THRESHOLD, FL_USAGE_DECAY, FL_FADED_MIN, FL_LOGIT_MAX, FL_SHARP_MAX, FL_COUNT };
/* the forward's pointers, in memnet/fused.py's FORWARD_POINTERS order */
enum { F_KEYS, F_VALUES, F_AGE, F_USAGE, F_RETAINED, F_SEGMENTS, F_Q, F_K, F_V, F_G, F_E, F_U, F_DECAY, F_POS,
       F_VALID, F_LRS, F_LWS, F_DL,
       F_NKEYS, F_NVALUES, F_NAGE, F_NUSAGE, F_NRETAINED, F_NSEGMENTS, F_VEC, F_RINDEX, F_RSRC, F_RWEIGHT, F_MASS,
       F_STRENGTH, F_EVENTS, F_ALLOC, F_RETENTION, F_CIDX, F_RTOP, F_CTOP, F_PTR_COUNT };
/* the backward's pointers, in memnet/fused.py's BACKWARD_POINTERS order (gradients of outputs may be 0) */
enum { B_KEYS, B_VALUES, B_Q, B_K, B_V, B_G, B_E, B_U, B_DECAY, B_VALID, B_LRS, B_LWS, B_DL,
       B_RSRC, B_RINDEX, B_CIDX, B_ALLOC,
       B_GNKEYS, B_GNVALUES, B_GVEC, B_GRWEIGHT, B_GMASS, B_GRETENTION,
       B_GKEYS, B_GVALUES, B_GQ, B_GK, B_GV, B_GG, B_GE, B_GU, B_GDECAY, B_GLRS, B_GLWS, B_GDL, B_RTOP, B_CTOP,
       B_PTR_COUNT };

static float dot(const float *a, const float *b, int64_t D) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < D; i++) s += a[i] * b[i];
    return s;
}


/* candidates are held transposed in ct (D, C), C a multiple of SCORE_BLOCK (padded with zero
   columns), so that scores are sums over D in vector lanes, without horizontal sums; vec16 is the
   compiler's vector extension (AVX-512, AVX or SSE, whatever the machine has) */
#define SCORE_BLOCK 64
typedef float vec16 __attribute__((vector_size(64)));
static int64_t padded(int64_t C) { return (C + SCORE_BLOCK - 1) / SCORE_BLOCK * SCORE_BLOCK; }

/* the scores (QB, C) of QB queries (QB, D) at once, 32 candidates at a time in sixteen registers:
   each column block of ct (rows of `ld` floats, the first C scored) is read once for QB queries, not
   once per query (a large bank's ct is beyond the first-level cache, and reading it per query would
   bound the step). Products and sums fuse (one rounding each): these scores only rank and weigh, as
   a matrix product's would, and the clamps and allocation scores elsewhere keep torch's order */
#ifdef __AVX512F__
#define QB 8  /* 16 accumulators of the 32 registers */
#else
#define QB 4  /* 8 accumulators, 16 registers of AVX */
#endif
__attribute__((optimize("fp-contract=fast")))
static void scores_block(float *s, const float *q, const float *ct, int64_t C, int64_t ld, int64_t D) {
    for (int64_t c0 = 0; c0 < C; c0 += 32) {  /* C is a multiple of SCORE_BLOCK (64) */
        vec16 a[QB][2] = {{{0}}}, x[2];
        for (int64_t i = 0; i < D; i++) {
            const float *col = ct + i * ld + c0;
            for (int j = 0; j < 2; j++) memcpy(&x[j], col + 16 * j, sizeof x[j]);
            for (int r = 0; r < QB; r++) {
                const float qr = q[r * D + i];
                for (int j = 0; j < 2; j++) a[r][j] += qr * x[j];
            }
        }
        for (int r = 0; r < QB; r++)
            for (int j = 0; j < 2; j++) memcpy(s + r * C + c0 + 16 * j, &a[r][j], sizeof a[r][j]);
    }
}

/* the scores (QB, C) of queries r0..r0+QB-1 of q (R, D) (missing ones zero) against the first C
   columns of ct (rows of ld floats) */
static void scores_of(float *s, float *qb, const float *q, int64_t r0, int64_t R, const float *ct, int64_t C,
                      int64_t ld, int64_t D) {
    const int64_t n = R - r0 < QB ? R - r0 : QB;
    memcpy(qb, q + r0 * D, (size_t)(n * D) * sizeof(float));
    if (n < QB) memset(qb + n * D, 0, (size_t)((QB - n) * D) * sizeof(float));
    scores_block(s, qb, ct, C, ld, D);
}

static int64_t push_top(float *v, int64_t *ix, int64_t size, int64_t K, float s, int64_t c);

/* the candidates c0..c1-1 of scores s (indexed from 0) into the descending list (top, idx) of
   `size` entries and capacity K; blocks of 16 whose largest score does not beat a full list's
   last are skipped whole. New size. */
static int64_t select_range(float *top, int64_t *idx, int64_t size, int64_t K, const float *s, int64_t c0,
                            int64_t c1) {
    int64_t c = c0;
    while (c < c1) {
        const int64_t end = c1 - c < 16 ? c1 : c + 16;
        if (size == K && end - c == 16) {
#ifdef __AVX512F__
            /* the candidates of the block that beat the list's last, as bits: usually none */
            unsigned m = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + c), _mm512_set1_ps(top[K - 1]), _CMP_GT_OQ);
            while (m) {
                const int j = __builtin_ctz(m);
                size = push_top(top, idx, size, K, s[c + j], c + j);
                m &= m - 1;
            }
            c = end;
            continue;
#else
            float m = s[c];
            for (int64_t j = c + 1; j < end; j++) m = s[j] > m ? s[j] : m;
            if (!(m > top[K - 1])) { c = end; continue; }
#endif
        }
        for (; c < end; c++) size = push_top(top, idx, size, K, s[c], c);
    }
    return size;
}

/* whether any of the n scores is NaN */
static int any_nan(const float *s, int64_t n) {
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t c = 0; c < n; c++) bad |= s[c] != s[c];
    return bad;
}

#ifdef __AVX512F__
/* the 16 x 16 block at src (rows lds floats apart, row r divided by den[r] unless den is 0) into dst
   transposed (rows ldd floats apart): four rounds of shuffles in registers */
static void block_transpose16(float *dst, int64_t ldd, const float *src, int64_t lds, const float *den) {
    __m512 r[16], t[16];
    for (int k = 0; k < 16; k++) {
        r[k] = _mm512_loadu_ps(src + k * lds);
        if (den) r[k] = _mm512_div_ps(r[k], _mm512_set1_ps(den[k]));
    }
    for (int k = 0; k < 16; k += 2) {
        t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
    }
#define PD(x) _mm512_castps_pd(x)
#define PS(x) _mm512_castpd_ps(x)
    for (int k = 0; k < 16; k += 4) {
        r[k] = PS(_mm512_unpacklo_pd(PD(t[k]), PD(t[k + 2])));
        r[k + 1] = PS(_mm512_unpackhi_pd(PD(t[k]), PD(t[k + 2])));
        r[k + 2] = PS(_mm512_unpacklo_pd(PD(t[k + 1]), PD(t[k + 3])));
        r[k + 3] = PS(_mm512_unpackhi_pd(PD(t[k + 1]), PD(t[k + 3])));
    }
#undef PD
#undef PS
    for (int k = 0; k < 4; k++) {
        t[k] = _mm512_shuffle_f32x4(r[k], r[k + 4], 0x88);
        t[k + 4] = _mm512_shuffle_f32x4(r[k], r[k + 4], 0xdd);
        t[k + 8] = _mm512_shuffle_f32x4(r[k + 8], r[k + 12], 0x88);
        t[k + 12] = _mm512_shuffle_f32x4(r[k + 8], r[k + 12], 0xdd);
    }
    for (int k = 0; k < 8; k++) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
        r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xdd);
    }
    for (int k = 0; k < 16; k++) _mm512_storeu_ps(dst + k * ldd, r[k]);
}
#endif

/* rows (R, D), row r divided by den[r] (den 0: as they are), into columns c0..c0+R-1 of ct (D, C):
   16 x 16 blocks transposed in registers where the machine has AVX-512, else sixteen rows at a time
   (each row of ct then receives a whole cache line of consecutive columns, not one float per line) */
static void put_columns(float *ct, const float *rows, const float *den, int64_t R, int64_t c0, int64_t C,
                        int64_t D) {
    for (int64_t r0 = 0; r0 < R; r0 += 16) {
        const int64_t n = R - r0 < 16 ? R - r0 : 16;
        int64_t i = 0;
#ifdef __AVX512F__
        if (n == 16)
            for (; i + 16 <= D; i += 16)
                block_transpose16(ct + i * C + c0 + r0, C, rows + r0 * D + i, D, den ? den + r0 : NULL);
#endif
        for (; i < D; i++) {
            float *out = ct + i * C + c0 + r0;
            for (int64_t j = 0; j < n; j++) out[j] = den ? rows[(r0 + j) * D + i] / den[r0 + j] : rows[(r0 + j) * D + i];
        }
    }
}

static void axpy(float *y, float a, const float *x, int64_t D) {  /* y += a x */
#pragma omp simd
    for (int64_t i = 0; i < D; i++) y[i] += a * x[i];
}

/* F.normalize(x, eps=c): x / max(|x|, c) */
static void normalize(float *out, const float *x, int64_t D, float c) {
    float n = sqrtf(dot(x, x, D));
    float den = n > c ? n : c;
    for (int64_t i = 0; i < D; i++) out[i] = x[i] / den;
}

/* gx += the gradient of F.normalize(x, eps=c) given gy: (gy - y (y.gy)) / |x| where |x| >= c,
   else gy / c (the clamp holds the denominator) */
static void normalize_backward_n(float *gx, const float *x, const float *gy, int64_t D, float c, float n);

static void normalize_backward(float *gx, const float *x, const float *gy, int64_t D, float c) {
    normalize_backward_n(gx, x, gy, D, c, sqrtf(dot(x, x, D)));
}

/* normalize_backward of x whose norm n is known (a gradient: divisions by n are products with 1/n) */
static void normalize_backward_n(float *gx, const float *x, const float *gy, int64_t D, float c, float n) {
    if (n >= c && n > 0.0f) {
        const float inv = 1.0f / n, s = dot(x, gy, D) * inv * inv;
#pragma omp simd
        for (int64_t i = 0; i < D; i++) gx[i] += (gy[i] - x[i] * s) * inv;
    } else {
        const float inv = 1.0f / c;
#pragma omp simd
        for (int64_t i = 0; i < D; i++) gx[i] += gy[i] * inv;
    }
}

static int all_zero(const float *x, int64_t D) {
    for (int64_t i = 0; i < D; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

/* memnet.addressing.unit_keys: F.normalize(x, eps) with all-zero rows left at zero */
static void unit_key(float *out, const float *x, int64_t D, float eps) {
    if (all_zero(x, D)) memset(out, 0, (size_t)D * sizeof(float));
    else normalize(out, x, D, eps);
}

/* insert score s of candidate c into a descending list (v, ix) of `size` entries and capacity K;
   an equal score already in the list stays ahead (it came from a lower candidate). New size. */
static int64_t push_top(float *v, int64_t *ix, int64_t size, int64_t K, float s, int64_t c) {
    int64_t j;
    if (size == K) {
        if (!(s > v[K - 1])) return size;
        j = K - 1;
    } else {
        j = size++;
    }
    while (j > 0 && v[j - 1] < s) { v[j] = v[j - 1]; ix[j] = ix[j - 1]; j--; }
    v[j] = s; ix[j] = c;
    return size;
}

static void softmax(float *w, const float *top, int64_t K, float scale) {
    float m = -INFINITY, s = 0.0f;
    for (int64_t j = 0; j < K; j++) { w[j] = top[j] * scale; if (w[j] > m) m = w[j]; }
    for (int64_t j = 0; j < K; j++) { w[j] = expf(w[j] - m); s += w[j]; }
    for (int64_t j = 0; j < K; j++) w[j] /= s;
}

/* the gradient of z = softmax(top * scale) given gw: gtop (K,), and d/dscale added to *gscale */
static void softmax_backward(float *gtop, float *gscale, const float *w, const float *gw, const float *top,
                             int64_t K, float scale) {
    float s = 0.0f;
    for (int64_t j = 0; j < K; j++) s += w[j] * gw[j];
    for (int64_t j = 0; j < K; j++) {
        float gz = w[j] * (gw[j] - s);
        *gscale += gz * top[j];
        gtop[j] = gz * scale;
    }
}

static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* slot n of the bank K_ (N, D): the key's norm nrm[n], its product with d kd[n] ("learned"), the
   retention gate ret[n] and, "learned", the clamped logit's pass mask pass[n]. The logit is dl[n]
   (the row's slot-wise logit: the bank's decay logit, with "evidence" plus the row's evidence term;
   the caller passes a batch stride of 0 when every row shares it) plus, "learned", the cosine of the
   key (normalised with eps) and the decay direction d. */
static inline void slot_gate(int64_t n, float *nrm, float *kd, float *ret, uint8_t *pass, const float *K_,
                             const float *d, const float *dl, const int64_t *dm, const float *fl) {
    const int64_t D = dm[DM_D];
    const float lim = fl[FL_LOGIT_MAX], eps = fl[FL_EPS];
    const float *k = K_ + n * D;
    nrm[n] = sqrtf(dot(k, k, D));
    if (dm[DM_DECAY] == DECAY_NONE) { ret[n] = 1.0f; pass[n] = 0; return; }
    float logit = dl[n];
    kd[n] = dm[DM_DECAY] == DECAY_LEARNED ? dot(k, d, D) : 0.0f;
    if (dm[DM_DECAY] == DECAY_LEARNED) logit += kd[n] / (nrm[n] > eps ? nrm[n] : eps);
    pass[n] = dm[DM_DECAY] == DECAY_LEARNED && logit >= -lim && logit <= lim;
    ret[n] = sigmoid(clampf(logit, -lim, lim));
}

/* slot_gate of every slot: one pass over the keys */
static void slot_gates(float *nrm, float *kd, float *ret, uint8_t *pass, const float *K_, const float *d,
                       const float *dl, const int64_t *dm, const float *fl) {
    for (int64_t n = 0; n < dm[DM_N]; n++) slot_gate(n, nrm, kd, ret, pass, K_, d, dl, dm, fl);
}

/* the W slots of highest allocation score, highest first, ties to the lowest index */
static void allocate(int64_t *alloc, const float *age, const float *usage, const float *retained,
                     const int64_t *dm, const float *fl, float *top) {
    int64_t N = dm[DM_N], W = dm[DM_W], size = 0;
    for (int64_t n = 0; n < N; n++) {
        float s;
        if (dm[DM_ALLOC] == ALLOC_WEAKEST) {
            s = 1.0f - retained[n];
        } else {
            s = (age[n] + 1.0f) * (1.0f - 0.5f * usage[n]);
            if (dm[DM_ALLOC] == ALLOC_FADED) s = s / (retained[n] > fl[FL_FADED_MIN] ? retained[n] : fl[FL_FADED_MIN]);
        }
        size = push_top(top, alloc, size, W, s, n);
    }
}

/* a per-thread scratch area of at least `floats` floats, kept between calls: a fresh allocation of
   this size each call is an mmap and its page faults, which cost as much as the step itself. Areas
   above SCRATCH_KEEP floats (a bank of a hundred thousand slots) are allocated for the call and
   freed after it (*owned set), so that a thread does not hold them afterwards. */
#define SCRATCH_KEEP ((size_t)1 << 24)
static __thread float *scratch_area = NULL;
static __thread size_t scratch_size = 0;

static float *scratch(size_t floats, int *owned) {
    *owned = floats > SCRATCH_KEEP;
    if (*owned) return malloc(floats * sizeof(float));
    if (floats > scratch_size) {
        float *grown = realloc(scratch_area, floats * sizeof(float));
        if (!grown) return NULL;
        scratch_area = grown;
        scratch_size = floats;
    }
    return scratch_area;
}

static float sharpness(float log_s, float log_max) { return expf(log_s < log_max ? log_s : log_max); }

/* ------------------------------------------------------------------------------------ forward */
int memnet_step_forward(const int64_t *dm, const float *fl, int64_t b0, int64_t b1, void **p, const int64_t *st) {
    const int64_t N = dm[DM_N], D = dm[DM_D], L = dm[DM_L], H = dm[DM_H], K = dm[DM_K], W = dm[DM_W];
    const int window = (int)dm[DM_WINDOW];
    const float eps = fl[FL_EPS], full = fl[FL_FULL];
    const int held = dm[DM_ALLOC] == ALLOC_WEAKEST;
    const float *lrs = p[F_LRS], *lws = p[F_LWS], *dl = p[F_DL];
    float ws = sharpness(lws[0], fl[FL_SHARP_MAX]);
    int bad = 0;
    if (N < 1 || D < 1) return 2;
    const int64_t C = window ? N + W : N;  /* a read's candidates: the slots, then the window's writes */
    const int64_t Cp = padded(C), Np = padded(N);  /* columns of ct; a write scores the first Np */
    const int64_t Cmax = Cp + K + 1;
    /* workspace: qh (L*H*D), E, addK, addV (N*D each: only the rows a write reaches are used), ku, mp,
       ku2 (W*D each), the candidates transposed (D*Cp), per-slot norms, denominators and write scales
       (N each), small lists; then 2N flags */
    size_t floats = (size_t)(L * H * D + 3 * N * D + 3 * W * D + D * Cp + 4 * N + 2 * Cmax + QB * Cmax + QB * D + D);
    int owned;
    float *work = scratch(floats + (size_t)(2 * N + 3) / 4 + 1, &owned);
    if (!work) return 2;
    uint8_t *pass = (uint8_t *)(work + floats), *touched = pass + N;
    float *qh = work, *E = qh + L * H * D, *addK = E + N * D, *addV = addK + N * D, *ku = addV + N * D,
          *mp = ku + W * D, *ku2 = mp + W * D, *ct = ku2 + W * D, *nrm = ct + D * Cp, *denf = nrm + N,
          *fw = denf + N, *tmp_kd = fw + N, *top = tmp_kd + N, *wsm = top + Cmax, *sq = wsm + Cmax, *qb = sq + QB * Cmax,
          *tmp = qb + QB * D;  /* tmp: D floats, the last */
    for (int64_t b = b0; b < b1; b++) {
        const float *Km = (const float *)p[F_KEYS] + b * st[F_KEYS], *Vm = (const float *)p[F_VALUES] + b * st[F_VALUES];
        const float *age = (const float *)p[F_AGE] + b * st[F_AGE], *usage = (const float *)p[F_USAGE] + b * st[F_USAGE];
        const float *retained = (const float *)p[F_RETAINED] + b * st[F_RETAINED];
        const float *q = (const float *)p[F_Q] + b * st[F_Q], *k = (const float *)p[F_K] + b * st[F_K];
        const float *v = (const float *)p[F_V] + b * st[F_V], *g = (const float *)p[F_G] + b * st[F_G];
        const float *e = (const float *)p[F_E] + b * st[F_E], *u = (const float *)p[F_U] + b * st[F_U];
        const float *d = (const float *)p[F_DECAY] + b * st[F_DECAY];
        const int64_t *pos = (const int64_t *)p[F_POS] + b * st[F_POS];
        const uint8_t *valid = (const uint8_t *)p[F_VALID] + b * st[F_VALID];
        float *nK = (float *)p[F_NKEYS] + b * st[F_NKEYS], *nV = (float *)p[F_NVALUES] + b * st[F_NVALUES];
        float *vec = (float *)p[F_VEC] + b * st[F_VEC], *rweight = (float *)p[F_RWEIGHT] + b * st[F_RWEIGHT];
        int64_t *rindex = (int64_t *)p[F_RINDEX] + b * st[F_RINDEX], *rsrc = (int64_t *)p[F_RSRC] + b * st[F_RSRC];
        float *mass = (float *)p[F_MASS] + b * st[F_MASS], *strength = (float *)p[F_STRENGTH] + b * st[F_STRENGTH];
        float *retention = (float *)p[F_RETENTION] + b * st[F_RETENTION];
        int64_t *alloc = (int64_t *)p[F_ALLOC] + b * st[F_ALLOC], *cidx = (int64_t *)p[F_CIDX] + b * st[F_CIDX];
        float *rtop = (float *)p[F_RTOP] + b * st[F_RTOP], *ctop = (float *)p[F_CTOP] + b * st[F_CTOP];

        allocate(alloc, age, usage, retained, dm, fl, top);
        /* one pass over the keys: norms and retention */
        slot_gates(nrm, tmp_kd, retention, pass, Km, d, dl + b * st[F_DL], dm, fl);
        for (int64_t n = 0; n < N; n++) denf[n] = nrm[n] > full ? nrm[n] : full;

        /* read: the top K of the slots (and, in a window, of its earlier writes) by cosine */
        for (int64_t i = 0; i < L * H; i++) normalize(qh + i * D, q + i * D, D, eps);
        put_columns(ct, Km, denf, N, 0, Cp, D);  /* the keys normalised (F.normalize, eps full), as columns */
        for (int64_t w = 0; w < W; w++) {
            unit_key(ku + w * D, k + w * D, D, eps);
            if (window) {
                for (int64_t i = 0; i < D; i++) tmp[i] = ku[w * D + i] * g[w];
                normalize(mp + w * D, tmp, D, full);
            }
        }
        if (window) put_columns(ct, mp, NULL, W, N, Cp, D);
        for (int64_t i = 0; i < D; i++)  /* padding columns score 0 and are never kept */
            memset(ct + i * Cp + C, 0, (size_t)(Cp - C) * sizeof(float));
        memset(mass, 0, (size_t)N * sizeof(float));
        float real = 0.0f;
        for (int64_t l = 0; l < L; l++) real += valid[l] ? 1.0f : 0.0f;
        float per_token = 1.0f / (real > 1.0f ? real : 1.0f);
        for (int64_t i = 0; i < L * H; i++) {
            if (i % QB == 0) {
                scores_of(sq, qb, qh, i, L * H, ct, Cp, Cp, D);
                bad |= any_nan(sq, QB * Cp);
            }
            const int64_t l = i / H, h = i % H;
            const float *sc = sq + (i % QB) * Cp;
            int64_t *src = rsrc + i * K;
            int64_t size = select_range(top, src, 0, K, sc, 0, N);
            for (int64_t c = N; c < C; c++)
                if (pos[c - N] < l) size = push_top(top, src, size, K, sc[c], c);  /* earlier offsets only */
            float *wt = rweight + i * K, *out = vec + i * D;
            memcpy(rtop + i * K, top, (size_t)K * sizeof(float));  /* the kept scores, for the backward */
            softmax(wt, top, K, sharpness(lrs[h], fl[FL_SHARP_MAX]));
            memset(out, 0, (size_t)D * sizeof(float));
            for (int64_t j = 0; j < K; j++) {
                int64_t c = src[j];
                if (c < N) {
                    axpy(out, wt[j], Vm + c * D, D);
                    rindex[i * K + j] = c;
                } else {
                    float a = wt[j] * g[c - N];
                    axpy(out, a, v + (c - N) * D, D);
                    rindex[i * K + j] = alloc[c - N];
                }
                if (valid[l]) mass[rindex[i * K + j]] += wt[j];
            }
        }
        for (int64_t n = 0; n < N; n++) mass[n] *= per_token;

        /* write: content addressing on the retained keys Km * retention, normalised with eps full: the
           read's columns times fw[n] = retention * max(|Km|, full) / max(|Km| retention, full) */
        for (int64_t n = 0; n < N; n++) {
            const float kr = nrm[n] * retention[n];
            fw[n] = nrm[n] > 0.0f ? retention[n] * denf[n] / (kr > full ? kr : full) : 0.0f;
        }
        memset(strength, 0, (size_t)N * sizeof(float));
        memset(touched, 0, (size_t)N);
        for (int64_t w = 0; w < W; w++) normalize(ku2 + w * D, ku + w * D, D, eps);
        for (int64_t w = 0; w < W; w++) {
            int64_t *ci = cidx + w * K;
            if (w % QB == 0) {
                scores_of(sq, qb, ku2, w, W, ct, Np, Cp, D);
                bad |= any_nan(sq, QB * Np);
            }
            float *sw = sq + (w % QB) * Np;
            for (int64_t n = 0; n < N; n++) sw[n] *= fw[n];
            select_range(top, ci, 0, K, sw, 0, N);
            memcpy(ctop + w * K, top, (size_t)K * sizeof(float));
            softmax(wsm, top, K, ws);
            for (int64_t j = 0; j <= K; j++) {
                int64_t n = j < K ? ci[j] : alloc[w];
                float a = (j < K ? u[w] * wsm[j] : 1.0f - u[w]) * g[w];
                if (!touched[n]) {  /* the first write to reach slot n: its sums start at zero */
                    touched[n] = 1;
                    memset(E + n * D, 0, (size_t)D * sizeof(float));
                    memset(addK + n * D, 0, (size_t)D * sizeof(float));
                    memset(addV + n * D, 0, (size_t)D * sizeof(float));
                }
                axpy(E + n * D, a, e + w * D, D);
                axpy(addK + n * D, a, ku + w * D, D);
                axpy(addV + n * D, a, v + w * D, D);
                strength[n] += a;
            }
        }
        /* retention, then erase and add where a write reached */
        for (int64_t n = 0; n < N; n++) {
            const float r = retention[n], *km = Km + n * D, *vm = Vm + n * D;
            float *nk = nK + n * D, *nv = nV + n * D;
            if (touched[n]) {
                const float *en = E + n * D, *ak = addK + n * D, *av = addV + n * D;
                for (int64_t i = 0; i < D; i++) {
                    float keep = 1.0f - (en[i] < 1.0f ? en[i] : 1.0f);
                    nk[i] = (km[i] * r) * keep + ak[i];
                    nv[i] = (vm[i] * r) * keep + av[i];
                }
            } else {
                for (int64_t i = 0; i < D; i++) { nk[i] = km[i] * r; nv[i] = vm[i] * r; }
            }
        }

        /* bookkeeping: write events reset age and retained; usage traces reads and writes */
        float *nage = (float *)p[F_NAGE] + b * st[F_NAGE], *nusage = (float *)p[F_NUSAGE] + b * st[F_NUSAGE];
        float *nret = (float *)p[F_NRETAINED] + b * st[F_NRETAINED];
        uint8_t *events = (uint8_t *)p[F_EVENTS] + b * st[F_EVENTS];
        for (int64_t n = 0; n < N; n++) {
            int ev = strength[n] >= fl[FL_THRESHOLD];
            events[n] = (uint8_t)ev;
            nage[n] = ev ? 0.0f : age[n] + 1.0f;
            nret[n] = ev ? (held ? (strength[n] < 1.0f ? strength[n] : 1.0f) : 1.0f) : retained[n] * retention[n];
            float us = fl[FL_USAGE_DECAY] * usage[n] + strength[n];
            us = us + mass[n] / (float)H;
            nusage[n] = clampf(us, 0.0f, 1.0f);
        }
        ((float *)p[F_NSEGMENTS])[b * st[F_NSEGMENTS]] = ((const float *)p[F_SEGMENTS])[b * st[F_SEGMENTS]] + 1.0f;
    }
    if (owned) free(work);
    return bad;
}

/* ------------------------------------------------------------------------------------ backward */
#define GRAD(idx) ((p[idx]) ? (const float *)(p[idx]) + b * st[idx] : NULL)

int memnet_step_backward(const int64_t *dm, const float *fl, int64_t b0, int64_t b1, void **p, const int64_t *st) {
    const int64_t N = dm[DM_N], D = dm[DM_D], L = dm[DM_L], H = dm[DM_H], K = dm[DM_K], W = dm[DM_W];
    const int window = (int)dm[DM_WINDOW];
    const float eps = fl[FL_EPS], full = fl[FL_FULL], smax = fl[FL_SHARP_MAX];
    const float *lrs = p[B_LRS], *lws = p[B_LWS], *dl = p[B_DL];
    const float ws = sharpness(lws[0], smax);
    /* the (N, D) arrays are used only in the rows of the slots a read or a write reached (their
       flags below); the rest of the bank is read in one pass, for its retention and gradient */
    size_t floats = (size_t)(D + 9 * N * D + 7 * W * D + 6 * (K + 1) + 3 * N + 2 * D);
    int owned;
    float *work = scratch(floats + (size_t)(4 * N + 3) / 4 + 1, &owned);  /* and 4N flags after the floats */
    if (!work) return 2;
    uint8_t *pass = (uint8_t *)(work + floats);  /* the retention logit inside its clamp */
    /* slots whose score a read / a write kept, and slots a write reached */
    uint8_t *read_hit = pass + N, *write_hit = read_hit + N, *touched = write_hit + N;
    float *qh = work, *mb = qh + D, *mr = mb + N * D, *E = mr + N * D, *Kr = E + N * D, *Vr = Kr + N * D,
          *gmb = Vr + N * D, *gmr = gmb + N * D, *gKr = gmr + N * D, *gVr = gKr + N * D, *ku = gVr + N * D,
          *ku2 = ku + W * D, *a_ = ku2 + W * D, *mp = a_ + W * D, *gmp = mp + W * D, *gku = gmp + W * D,
          *gku2 = gku + W * D, *top = gku2 + W * D, *wsm = top + (K + 1), *gw = wsm + (K + 1), *gtop = gw + (K + 1),
          *wt = gtop + (K + 1), *gwt = wt + (K + 1), *ret = gwt + (K + 1), *nrm = ret + N, *kd = nrm + N, *gqh = kd + N,
          *tmp = gqh + D;
    (void)top; (void)gwt;
    for (int64_t b = b0; b < b1; b++) {
        const float *Km = (const float *)p[B_KEYS] + b * st[B_KEYS], *Vm = (const float *)p[B_VALUES] + b * st[B_VALUES];
        const float *q = (const float *)p[B_Q] + b * st[B_Q], *k = (const float *)p[B_K] + b * st[B_K];
        const float *v = (const float *)p[B_V] + b * st[B_V], *g = (const float *)p[B_G] + b * st[B_G];
        const float *e = (const float *)p[B_E] + b * st[B_E], *u = (const float *)p[B_U] + b * st[B_U];
        const float *d = (const float *)p[B_DECAY] + b * st[B_DECAY];
        const uint8_t *valid = (const uint8_t *)p[B_VALID] + b * st[B_VALID];
        const int64_t *rsrc = (const int64_t *)p[B_RSRC] + b * st[B_RSRC];
        const int64_t *rindex = (const int64_t *)p[B_RINDEX] + b * st[B_RINDEX];
        const int64_t *cidx = (const int64_t *)p[B_CIDX] + b * st[B_CIDX], *alloc = (const int64_t *)p[B_ALLOC] + b * st[B_ALLOC];
        const float *rtop = (const float *)p[B_RTOP] + b * st[B_RTOP], *ctop = (const float *)p[B_CTOP] + b * st[B_CTOP];
        const float *gnK = GRAD(B_GNKEYS), *gnV = GRAD(B_GNVALUES);
        const float *gvec = GRAD(B_GVEC), *grw = GRAD(B_GRWEIGHT);
        const float *gmass = GRAD(B_GMASS), *gret_out = GRAD(B_GRETENTION);
        float *gK = (float *)p[B_GKEYS] + b * st[B_GKEYS], *gV = (float *)p[B_GVALUES] + b * st[B_GVALUES];
        float *gq = (float *)p[B_GQ] + b * st[B_GQ], *gk = (float *)p[B_GK] + b * st[B_GK];
        float *gv = (float *)p[B_GV] + b * st[B_GV], *gg = (float *)p[B_GG] + b * st[B_GG];
        float *ge = (float *)p[B_GE] + b * st[B_GE], *gu = (float *)p[B_GU] + b * st[B_GU];
        float *gd = (float *)p[B_GDECAY] + b * st[B_GDECAY], *glrs = (float *)p[B_GLRS] + b * st[B_GLRS];
        float *glws = (float *)p[B_GLWS] + b * st[B_GLWS], *gdl = (float *)p[B_GDL] + b * st[B_GDL];
        const int wrote = gnK || gnV;  /* a gradient reaches the written state */
        /* every output gradient of this row starts at zero (gK and gV are set whole below) */
        memset(gq, 0, (size_t)(L * H * D) * sizeof(float)); memset(gk, 0, (size_t)(W * D) * sizeof(float));
        memset(gv, 0, (size_t)(W * D) * sizeof(float)); memset(gg, 0, (size_t)W * sizeof(float));
        memset(ge, 0, (size_t)(W * D) * sizeof(float)); memset(gu, 0, (size_t)W * sizeof(float));
        memset(gd, 0, (size_t)D * sizeof(float)); memset(glrs, 0, (size_t)H * sizeof(float));
        memset(gdl, 0, (size_t)N * sizeof(float));
        float gws = 0.0f;

        /* recompute what the forward kept in registers (the slots' gates: those a write reached
           below, every other slot in the last pass over the bank, while its key is in cache) */
        const float *dlb = dl + b * st[B_DL];
        for (int64_t w = 0; w < W; w++) {
            unit_key(ku + w * D, k + w * D, D, eps);
            normalize(ku2 + w * D, ku + w * D, D, eps);
            if (window) {
                for (int64_t i = 0; i < D; i++) a_[w * D + i] = ku[w * D + i] * g[w];
                normalize(mp + w * D, a_ + w * D, D, full);
            }
        }
        memset(read_hit, 0, (size_t)(3 * N));  /* read_hit, write_hit, touched */
        memset(gmp, 0, (size_t)(3 * W * D) * sizeof(float));  /* gmp, gku, gku2 */
        /* E: the summed erase of each slot a write reached, from the write weights */
        for (int64_t w = 0; w < W; w++) {
            const int64_t *ci = cidx + w * K;
            softmax(wsm, ctop + w * K, K, ws);
            for (int64_t j = 0; j <= K; j++) {
                int64_t n = j < K ? ci[j] : alloc[w];
                if (!touched[n]) {
                    touched[n] = 1;
                    memset(E + n * D, 0, (size_t)D * sizeof(float));
                    slot_gate(n, nrm, kd, ret, pass, Km, d, dlb, dm, fl);
                }
                axpy(E + n * D, (j < K ? u[w] * wsm[j] : 1.0f - u[w]) * g[w], e + w * D, D);
            }
        }

        /* write backward: erase then add, on the slots a write reached */
        if (wrote) {
            for (int64_t n = 0; n < N; n++) {
                if (!touched[n]) continue;
                const float r = ret[n];
                for (int64_t i = 0; i < D; i++) {
                    const int64_t x = n * D + i;
                    Kr[x] = Km[x] * r;
                    Vr[x] = Vm[x] * r;
                    float keep = 1.0f - (E[x] < 1.0f ? E[x] : 1.0f);
                    float gkeep = 0.0f;
                    gKr[x] = gnK ? gnK[x] * keep : 0.0f;
                    gVr[x] = gnV ? gnV[x] * keep : 0.0f;
                    if (gnK) gkeep += gnK[x] * Kr[x];
                    if (gnV) gkeep += gnV[x] * Vr[x];
                    E[x] = E[x] <= 1.0f ? -gkeep : 0.0f;  /* E now holds the gradient of the summed erase */
                }
            }
            for (int64_t w = 0; w < W; w++) {
                const int64_t *ci = cidx + w * K;
                const float *top_w = ctop + w * K;
                softmax(wsm, top_w, K, ws);
                float gbase_sum_g = 0.0f, gcw[K > 0 ? K : 1];
                for (int64_t j = 0; j <= K; j++) {
                    int64_t n = j < K ? ci[j] : alloc[w];
                    float base = j < K ? u[w] * wsm[j] : 1.0f - u[w];
                    float a = base * g[w];
                    float gwt_ = dot(E + n * D, e + w * D, D);
                    if (gnK) { gwt_ += dot(gnK + n * D, ku + w * D, D); axpy(gku + w * D, a, gnK + n * D, D); }
                    if (gnV) { gwt_ += dot(gnV + n * D, v + w * D, D); axpy(gv + w * D, a, gnV + n * D, D); }
                    axpy(ge + w * D, a, E + n * D, D);
                    gbase_sum_g += gwt_ * base;
                    float gbase = gwt_ * g[w];
                    if (j < K) { gu[w] += gbase * wsm[j]; gcw[j] = gbase * u[w]; }
                    else gu[w] -= gbase;
                }
                gg[w] += gbase_sum_g;
                softmax_backward(gtop, &gws, wsm, gcw, top_w, K, ws);
                for (int64_t j = 0; j < K; j++) {
                    const int64_t n = ci[j];
                    if (!write_hit[n]) {  /* the retained key normalised (eps full), and its gradient from zero */
                        write_hit[n] = 1;
                        normalize(mr + n * D, Kr + n * D, D, full);
                        memset(gmr + n * D, 0, (size_t)D * sizeof(float));
                    }
                    axpy(gku2 + w * D, gtop[j], mr + n * D, D);
                    axpy(gmr + n * D, gtop[j], ku2 + w * D, D);
                }
                normalize_backward(gku + w * D, ku + w * D, gku2 + w * D, D, eps);
            }
            for (int64_t n = 0; n < N; n++)  /* a slot no write kept has no score gradient */
                if (write_hit[n]) normalize_backward(gKr + n * D, Kr + n * D, gmr + n * D, D, full);
        }
        /* every slot: retention (Kr = Km * ret, Vr = Vm * ret) and the gradient the state carries */
        for (int64_t n = 0; n < N; n++) {
            const float *km = Km + n * D, *vm = Vm + n * D;
            const float *gkr = wrote && touched[n] ? gKr + n * D : (gnK ? gnK + n * D : NULL);
            const float *gvr = wrote && touched[n] ? gVr + n * D : (gnV ? gnV + n * D : NULL);
            float *gkn = gK + n * D, *gvn = gV + n * D;
            if (!touched[n]) slot_gate(n, nrm, kd, ret, pass, Km, d, dlb, dm, fl);
            const float r = ret[n];
            float gr = gret_out ? gret_out[n] : 0.0f;
            if (gkr) {
                gr += dot(gkr, km, D);
                for (int64_t i = 0; i < D; i++) gkn[i] = gkr[i] * r;
            } else {
                memset(gkn, 0, (size_t)D * sizeof(float));
            }
            if (gvr) {
                gr += dot(gvr, vm, D);
                for (int64_t i = 0; i < D; i++) gvn[i] = gvr[i] * r;
            } else {
                memset(gvn, 0, (size_t)D * sizeof(float));
            }
            if (pass[n]) {  /* "learned" and the logit inside its clamp: logit = dl + <km, d> / max(|km|, eps) */
                const float glogit = gr * r * (1.0f - r), nn = nrm[n];
                gdl[n] += glogit;
                const float inv = 1.0f / (nn > eps ? nn : eps);
#pragma omp simd
                for (int64_t i = 0; i < D; i++) gd[i] += glogit * (km[i] * inv);
                if (nn >= eps && nn > 0.0f) {  /* normalize_backward_n of glogit d, with <km, d> kept by slot_gates */
                    const float s = glogit * kd[n] * inv * inv;
#pragma omp simd
                    for (int64_t i = 0; i < D; i++) gkn[i] += (glogit * d[i] - km[i] * s) * inv;
                } else {
#pragma omp simd
                    for (int64_t i = 0; i < D; i++) gkn[i] += glogit * d[i] * inv;
                }
            }
        }

        /* read backward */
        float real = 0.0f;
        for (int64_t l = 0; l < L; l++) real += valid[l] ? 1.0f : 0.0f;
        float per_token = 1.0f / (real > 1.0f ? real : 1.0f);
        for (int64_t l = 0; l < L; l++)
            for (int64_t h = 0; h < H; h++) {
                int64_t i = l * H + h;
                const int64_t *src = rsrc + i * K;
                float rs = sharpness(lrs[h], smax);
                normalize(qh, q + i * D, D, eps);
                const float *top_i = rtop + i * K;
                softmax(wt, top_i, K, rs);
                for (int64_t j = 0; j < K; j++) {
                    int64_t c = src[j];
                    float gwj = grw ? grw[i * K + j] : 0.0f;
                    if (gmass && valid[l]) gwj += gmass[rindex[i * K + j]] * per_token;
                    if (gvec) {
                        const float *gvi = gvec + i * D;
                        if (c < N) {
                            gwj += dot(gvi, Vm + c * D, D);
                            axpy(gV + c * D, wt[j], gvi, D);
                        } else {
                            int64_t w = c - N;
                            float vg = dot(gvi, v + w * D, D);
                            gwj += vg * g[w];
                            axpy(gv + w * D, wt[j] * g[w], gvi, D);
                            gg[w] += wt[j] * vg;
                        }
                    }
                    gw[j] = gwj;
                }
                float grs = 0.0f;
                softmax_backward(gtop, &grs, wt, gw, top_i, K, rs);
                if (lrs[h] <= smax) glrs[h] += grs * rs;
                memset(gqh, 0, (size_t)D * sizeof(float));
                for (int64_t j = 0; j < K; j++) {
                    int64_t c = src[j];
                    if (c < N && !read_hit[c]) {  /* the key normalised (eps full), and its gradient from zero */
                        read_hit[c] = 1;
                        const float den = nrm[c] > full ? nrm[c] : full;
                        for (int64_t x = 0; x < D; x++) mb[c * D + x] = Km[c * D + x] / den;
                        memset(gmb + c * D, 0, (size_t)D * sizeof(float));
                    }
                    axpy(gqh, gtop[j], c < N ? mb + c * D : mp + (c - N) * D, D);
                    axpy(c < N ? gmb + c * D : gmp + (c - N) * D, gtop[j], qh, D);
                }
                normalize_backward(gq + i * D, q + i * D, gqh, D, eps);
            }
        for (int64_t n = 0; n < N; n++)  /* a slot no read kept has no score gradient */
            if (read_hit[n]) normalize_backward_n(gK + n * D, Km + n * D, gmb + n * D, D, full, nrm[n]);
        if (window)
            for (int64_t w = 0; w < W; w++) {
                memset(tmp, 0, (size_t)D * sizeof(float));
                normalize_backward(tmp, a_ + w * D, gmp + w * D, D, full);
                axpy(gku + w * D, g[w], tmp, D);
                gg[w] += dot(tmp, ku + w * D, D);
            }
        for (int64_t w = 0; w < W; w++)
            if (!all_zero(k + w * D, D)) normalize_backward(gk + w * D, k + w * D, gku + w * D, D, eps);
        glws[0] = lws[0] <= smax ? gws * ws : 0.0f;
    }
    if (owned) free(work);
    return 0;
}

/* ------------------------------------------------------------------------------------ scans */
/* the backward of a scan, last segment first. The gradient of the state passes from segment s+1 to
   segment s through two buffers that take turns (p[B_GKEYS], p[B_GVALUES]: (B, 2, N, D), the second
   sst[] bytes after the first): segment s writes the gradient of the state it read into buffer s % 2,
   and reads the gradient of the state it wrote from buffer (s + 1) % 2, or, for the last segment, from
   p[B_GNKEYS] and p[B_GNVALUES] (the gradient of the scan's final state; may be 0). With detach_every
   k > 0, no gradient passes into segment s from segment s+1 where s+1 is a multiple of k (truncated
   backprop: the state was cut there). The gradient of the initial state is left in buffer 0. */
int memnet_scan_backward(const int64_t *dm, const float *fl, int64_t b0, int64_t b1, int64_t S,
                         int64_t detach_every, void **p, const int64_t *st, const int64_t *sst) {
    void *ps[B_PTR_COUNT];
    int64_t sts[B_PTR_COUNT];
    int flag = 0;
    /* row by row, so that the gradient passed between a row's segments stays in cache */
    for (int64_t b = b0; b < b1; b++)
    for (int64_t s = S - 1; s >= 0; s--) {
        for (int i = 0; i < B_PTR_COUNT; i++) {
            ps[i] = p[i] ? (char *)p[i] + s * sst[i] : NULL;
            sts[i] = st[i];
        }
        const int64_t mine = s % 2, next = (s + 1) % 2;
        ps[B_GKEYS] = (char *)p[B_GKEYS] + mine * sst[B_GKEYS];
        ps[B_GVALUES] = (char *)p[B_GVALUES] + mine * sst[B_GVALUES];
        if (s == S - 1) {
            ps[B_GNKEYS] = p[B_GNKEYS];
            ps[B_GNVALUES] = p[B_GNVALUES];
        } else if (detach_every > 0 && (s + 1) % detach_every == 0) {
            ps[B_GNKEYS] = NULL;
            ps[B_GNVALUES] = NULL;
        } else {
            ps[B_GNKEYS] = (char *)p[B_GKEYS] + next * sst[B_GKEYS];
            ps[B_GNVALUES] = (char *)p[B_GVALUES] + next * sst[B_GVALUES];
            sts[B_GNKEYS] = st[B_GKEYS];
            sts[B_GNVALUES] = st[B_GVALUES];
        }
        int f = memnet_step_backward(dm, fl, b, b + 1, ps, sts);
        flag = f > flag ? f : flag;
    }
    return flag;
}

/* S segments in one call: the step above on each in turn, every pointer advanced by sst[i] bytes per
   segment (0: the same tensor for every segment). The state is a chain of buffers: the caller points
   the state's inputs at segment 0 of a (B, S+1, ...) buffer and its outputs at segment 1 of the same
   one, so that segment s reads what segment s-1 wrote. Returns the largest flag of the steps (a NaN
   score in any segment: the caller takes the loop of single steps).

   With evidence (decay_mode "evidence"; else 0 and the row's logit is p[F_DL]): before each segment
   every row's slot-wise logit (dls, (B, S, N), row b at b * dl_bst) is made from the evidence and the
   age the row carries, base[n] + scale * (ew * evidence[n] + aw * min(age[n], cap) / cap) (ew_aw:
   ew, aw, scale, cap), and after it the evidence (a (B, S+1, N) chain, row b at b * ev_bst) becomes 0
   where a write event reset the slot, else the larger of itself and the segment's strongest read hit:
   for each real token, the read weight times the kept score (clamped at 0) over the heads, summed per
   slot (memnet.memory.read_hits). */
int memnet_scan_forward(const int64_t *dm, const float *fl, int64_t b0, int64_t b1, int64_t S, void **p,
                        const int64_t *st, const int64_t *sst, const float *base, const float *ew_aw,
                        float *evidence, int64_t ev_bst, float *dls, int64_t dl_bst) {
    const int64_t N = dm[DM_N], L = dm[DM_L], H = dm[DM_H], K = dm[DM_K];
    void *ps[F_PTR_COUNT];
    int64_t sts[F_PTR_COUNT];
    int flag = 0;
    float *acc = NULL, *hits = NULL;
    if (evidence) {
        acc = calloc((size_t)(2 * N), sizeof(float));
        if (!acc) return 2;
        hits = acc + N;
    }
    /* row by row, so that the state a segment writes is still in cache when the next reads it */
    for (int64_t r = b0; r < b1 && flag < 2; r++)
    for (int64_t s = 0; s < S && flag < 2; s++) {
        for (int i = 0; i < F_PTR_COUNT; i++) {
            ps[i] = p[i] ? (char *)p[i] + s * sst[i] : NULL;
            sts[i] = st[i];
        }
        if (!evidence) {
            int f = memnet_step_forward(dm, fl, r, r + 1, ps, sts);
            flag = f > flag ? f : flag;
            continue;
        }
        const float ew = ew_aw[0], aw = ew_aw[1], scale = ew_aw[2], cap = ew_aw[3];
        for (int64_t b = r; b < r + 1; b++) {
            const float *age = (const float *)ps[F_AGE] + b * st[F_AGE], *ev = evidence + b * ev_bst + s * N;
            float *d = dls + b * dl_bst + s * N;
            for (int64_t n = 0; n < N; n++) {
                const float aged = (age[n] < cap ? age[n] : cap) / cap;
                d[n] = base[n] + scale * (ew * ev[n] + aw * aged);
            }
        }
        ps[F_DL] = dls + s * N;
        sts[F_DL] = dl_bst;
        int f = memnet_step_forward(dm, fl, r, r + 1, ps, sts);
        flag = f > flag ? f : flag;
        for (int64_t b = r; b < r + 1; b++) {
            const int64_t *rindex = (const int64_t *)ps[F_RINDEX] + b * st[F_RINDEX];
            const float *rw = (const float *)ps[F_RWEIGHT] + b * st[F_RWEIGHT];
            const float *rtop = (const float *)ps[F_RTOP] + b * st[F_RTOP];
            const uint8_t *valid = (const uint8_t *)ps[F_VALID] + b * st[F_VALID];
            const uint8_t *events = (const uint8_t *)ps[F_EVENTS] + b * st[F_EVENTS];
            const float *ev = evidence + b * ev_bst + s * N;
            float *next = evidence + b * ev_bst + (s + 1) * N;
            for (int64_t n = 0; n < N; n++) hits[n] = 0.0f;
            for (int64_t l = 0; l < L; l++) {
                const float v = valid[l] ? 1.0f : 0.0f;
                const int64_t *ix = rindex + l * H * K;
                for (int64_t x = 0; x < H * K; x++) {  /* the token's sum per slot, in index order */
                    const float sc = rtop[l * H * K + x] > 0.0f ? rtop[l * H * K + x] : 0.0f;
                    acc[ix[x]] += rw[l * H * K + x] * sc / (float)H * v;
                }
                for (int64_t x = 0; x < H * K; x++) {  /* the strongest token so far, and the sums back to 0 */
                    const int64_t n = ix[x];
                    if (acc[n] > hits[n]) hits[n] = acc[n];
                }
                for (int64_t x = 0; x < H * K; x++) acc[ix[x]] = 0.0f;
            }
            for (int64_t n = 0; n < N; n++) {
                const float h = hits[n] < 1.0f ? hits[n] : 1.0f;
                next[n] = events[n] ? 0.0f : (ev[n] > h ? ev[n] : h);
            }
        }
    }
    free(acc);
    return flag;
}
