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

/* the scores (QB, C) of QB queries (QB, D) at once, 32 candidates at a time in eight registers:
   each column block of ct is read once for QB queries, not once per query (a large bank's ct is
   beyond the first-level cache, and reading it per query would bound the step) */
#define QB 4
static void scores_block(float *s, const float *q, const float *ct, int64_t C, int64_t D) {
    for (int64_t c0 = 0; c0 < C; c0 += 32) {
        vec16 a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0}, x0, x1;
        for (int64_t i = 0; i < D; i++) {
            const float *col = ct + i * C + c0;
            memcpy(&x0, col, sizeof x0); memcpy(&x1, col + 16, sizeof x1);
            const float q0 = q[i], q1 = q[D + i], q2 = q[2 * D + i], q3 = q[3 * D + i];
            a00 += q0 * x0; a01 += q0 * x1; a10 += q1 * x0; a11 += q1 * x1;
            a20 += q2 * x0; a21 += q2 * x1; a30 += q3 * x0; a31 += q3 * x1;
        }
        memcpy(s + c0, &a00, sizeof a00); memcpy(s + c0 + 16, &a01, sizeof a01);
        memcpy(s + C + c0, &a10, sizeof a10); memcpy(s + C + c0 + 16, &a11, sizeof a11);
        memcpy(s + 2 * C + c0, &a20, sizeof a20); memcpy(s + 2 * C + c0 + 16, &a21, sizeof a21);
        memcpy(s + 3 * C + c0, &a30, sizeof a30); memcpy(s + 3 * C + c0 + 16, &a31, sizeof a31);
    }
}

/* the scores of queries r0..r0+QB-1 of q (R, D) (missing ones zero) into s (QB, C) */
static void scores_of(float *s, float *qb, const float *q, int64_t r0, int64_t R, const float *ct, int64_t C,
                      int64_t D) {
    const int64_t n = R - r0 < QB ? R - r0 : QB;
    memcpy(qb, q + r0 * D, (size_t)(n * D) * sizeof(float));
    if (n < QB) memset(qb + n * D, 0, (size_t)((QB - n) * D) * sizeof(float));
    scores_block(s, qb, ct, C, D);
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
            float m = s[c];
            for (int64_t j = c + 1; j < end; j++) m = s[j] > m ? s[j] : m;
            if (!(m > top[K - 1])) { c = end; continue; }
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

/* rows (R, D) into columns c0..c0+R-1 of ct (D, C), sixteen rows at a time: each row of ct then
   receives a whole cache line of consecutive columns, not one float per line */
static void put_columns(float *ct, const float *rows, int64_t R, int64_t c0, int64_t C, int64_t D) {
    for (int64_t r0 = 0; r0 < R; r0 += 16) {
        const int64_t n = R - r0 < 16 ? R - r0 : 16;
        for (int64_t i = 0; i < D; i++) {
            float *out = ct + i * C + c0 + r0;
            for (int64_t j = 0; j < n; j++) out[j] = rows[(r0 + j) * D + i];
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
static void normalize_backward(float *gx, const float *x, const float *gy, int64_t D, float c) {
    float n = sqrtf(dot(x, x, D));
    if (n >= c && n > 0.0f) {
        float s = dot(x, gy, D) / (n * n);
        for (int64_t i = 0; i < D; i++) gx[i] += (gy[i] - x[i] * s) / n;
    } else {
        for (int64_t i = 0; i < D; i++) gx[i] += gy[i] / c;
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

/* the retention gate of every slot (N,) and, "learned", the clamped logit's pass mask (N,); dl is the
   row's slot-wise logit (N,): the bank's decay logit, with "evidence" plus the row's evidence term (the
   caller passes a batch stride of 0 when every row shares it) */
static void retention_gate(float *ret, uint8_t *pass, const float *K_, const float *d, const float *dl,
                           const int64_t *dm, const float *fl, float *tmp) {
    int64_t N = dm[DM_N], D = dm[DM_D];
    float lim = fl[FL_LOGIT_MAX];
    for (int64_t n = 0; n < N; n++) {
        if (dm[DM_DECAY] == DECAY_NONE) { ret[n] = 1.0f; pass[n] = 0; continue; }
        float logit = dl[n];
        if (dm[DM_DECAY] == DECAY_LEARNED) {
            normalize(tmp, K_ + n * D, D, fl[FL_EPS]);
            logit = dl[n] + dot(tmp, d, D);
        }
        pass[n] = dm[DM_DECAY] == DECAY_LEARNED && logit >= -lim && logit <= lim;
        ret[n] = sigmoid(clampf(logit, -lim, lim));
    }
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
    /* workspace: qh (L*H*D), mb, mr, E, addK, addV, Kr (N*D each), ku, mp (W*D each), the candidates
       transposed (D*(N+W), D*N), small lists */
    const int64_t Cmax = padded(N + W) + K + 1;
    size_t floats = (size_t)(L * H * D + 6 * N * D + 3 * W * D + 2 * Cmax + QB * Cmax + QB * D + D * padded(N + W)
                            + D * padded(N) + D);
    int owned;
    float *work = scratch(floats + (size_t)N, &owned);
    if (!work) return 2;
    uint8_t *pass = (uint8_t *)(work + floats);  /* N flags */
    float *qh = work, *mb = qh + L * H * D, *mr = mb + N * D, *E = mr + N * D, *addK = E + N * D,
          *addV = addK + N * D, *Kr = addV + N * D, *ku = Kr + N * D, *mp = ku + W * D, *top = mp + W * D,
          *wsm = top + Cmax, *sq = wsm + Cmax, *qb = sq + QB * Cmax, *ku2 = qb + QB * D,
          *ct = ku2 + W * D, *ctw = ct + D * padded(N + W), *tmp = ctw + D * padded(N);  /* tmp: D floats, the last */
    const int64_t C = window ? N + W : N;  /* a read's candidates: the slots, then the window's writes */
    const int64_t Cp = padded(C), Np = padded(N);  /* columns of ct and ctw */
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

        /* read: the top K of the slots (and, in a window, of its earlier writes) by cosine */
        for (int64_t i = 0; i < L * H; i++) normalize(qh + i * D, q + i * D, D, eps);
        memset(ct, 0, (size_t)(D * Cp) * sizeof(float));  /* padding columns score 0 and are never kept */
        for (int64_t n = 0; n < N; n++) normalize(mb + n * D, Km + n * D, D, full);
        put_columns(ct, mb, N, 0, Cp, D);
        for (int64_t w = 0; w < W; w++) {
            unit_key(ku + w * D, k + w * D, D, eps);
            if (window) {
                for (int64_t i = 0; i < D; i++) tmp[i] = ku[w * D + i] * g[w];
                normalize(mp + w * D, tmp, D, full);
            }
        }
        if (window) put_columns(ct, mp, W, N, Cp, D);
        memset(mass, 0, (size_t)N * sizeof(float));
        float real = 0.0f;
        for (int64_t l = 0; l < L; l++) real += valid[l] ? 1.0f : 0.0f;
        float per_token = 1.0f / (real > 1.0f ? real : 1.0f);
        for (int64_t i = 0; i < L * H; i++) {
            if (i % QB == 0) {
                scores_of(sq, qb, qh, i, L * H, ct, Cp, D);
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

        /* write: retention, content addressing on the retained keys, erase then add */
        retention_gate(retention, pass, Km, d, dl + b * st[F_DL], dm, fl, tmp);
        for (int64_t n = 0; n < N; n++)
            for (int64_t i = 0; i < D; i++) {
                Kr[n * D + i] = Km[n * D + i] * retention[n];
                nV[n * D + i] = Vm[n * D + i] * retention[n];
            }
        memset(ctw, 0, (size_t)(D * Np) * sizeof(float));
        for (int64_t n = 0; n < N; n++) normalize(mr + n * D, Kr + n * D, D, full);
        put_columns(ctw, mr, N, 0, Np, D);
        memset(E, 0, (size_t)(3 * N * D) * sizeof(float));  /* E, addK, addV */
        memset(strength, 0, (size_t)N * sizeof(float));
        for (int64_t w = 0; w < W; w++) normalize(ku2 + w * D, ku + w * D, D, eps);
        for (int64_t w = 0; w < W; w++) {
            int64_t *ci = cidx + w * K;
            if (w % QB == 0) {
                scores_of(sq, qb, ku2, w, W, ctw, Np, D);
                bad |= any_nan(sq, QB * Np);
            }
            select_range(top, ci, 0, K, sq + (w % QB) * Np, 0, N);
            memcpy(ctop + w * K, top, (size_t)K * sizeof(float));
            softmax(wsm, top, K, ws);
            for (int64_t j = 0; j <= K; j++) {
                int64_t n = j < K ? ci[j] : alloc[w];
                float a = (j < K ? u[w] * wsm[j] : 1.0f - u[w]) * g[w];
                axpy(E + n * D, a, e + w * D, D);
                axpy(addK + n * D, a, ku + w * D, D);
                axpy(addV + n * D, a, v + w * D, D);
                strength[n] += a;
            }
        }
        for (int64_t x = 0; x < N * D; x++) {
            float keep = 1.0f - (E[x] < 1.0f ? E[x] : 1.0f);
            nK[x] = Kr[x] * keep + addK[x];
            nV[x] = nV[x] * keep + addV[x];
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
    size_t floats = (size_t)(L * H * D + 9 * N * D + 7 * W * D + 6 * (K + 1) + 3 * N + 2 * D);
    int owned;
    float *work = scratch(floats + (size_t)N, &owned);  /* and 3N flags in the last N floats */
    if (!work) return 2;
    uint8_t *pass = (uint8_t *)(work + floats);  /* the retention logit inside its clamp */
    uint8_t *read_hit = pass + N, *write_hit = read_hit + N;  /* slots whose score a read / a write kept */
    float *qh = work, *mb = qh + L * H * D, *mr = mb + N * D, *E = mr + N * D, *Kr = E + N * D, *Vr = Kr + N * D,
          *gmb = Vr + N * D, *gmr = gmb + N * D, *gKr = gmr + N * D, *gVr = gKr + N * D, *ku = gVr + N * D,
          *ku2 = ku + W * D, *a_ = ku2 + W * D, *mp = a_ + W * D, *gmp = mp + W * D, *gku = gmp + W * D,
          *gku2 = gku + W * D, *top = gku2 + W * D, *wsm = top + (K + 1), *gw = wsm + (K + 1), *gtop = gw + (K + 1),
          *wt = gtop + (K + 1), *gwt = wt + (K + 1), *ret = gwt + (K + 1), *gret = ret + N, *gqh = gret + N,
          *tmp = gqh + D;
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
        /* every output gradient of this row starts at zero */
        memset(gK, 0, (size_t)(N * D) * sizeof(float)); memset(gV, 0, (size_t)(N * D) * sizeof(float));
        memset(gq, 0, (size_t)(L * H * D) * sizeof(float)); memset(gk, 0, (size_t)(W * D) * sizeof(float));
        memset(gv, 0, (size_t)(W * D) * sizeof(float)); memset(gg, 0, (size_t)W * sizeof(float));
        memset(ge, 0, (size_t)(W * D) * sizeof(float)); memset(gu, 0, (size_t)W * sizeof(float));
        memset(gd, 0, (size_t)D * sizeof(float)); memset(glrs, 0, (size_t)H * sizeof(float));
        memset(gdl, 0, (size_t)N * sizeof(float));
        float gws = 0.0f;

        /* recompute what the forward kept in registers */
        for (int64_t n = 0; n < N; n++) normalize(mb + n * D, Km + n * D, D, full);
        for (int64_t w = 0; w < W; w++) {
            unit_key(ku + w * D, k + w * D, D, eps);
            normalize(ku2 + w * D, ku + w * D, D, eps);
            if (window) {
                for (int64_t i = 0; i < D; i++) a_[w * D + i] = ku[w * D + i] * g[w];
                normalize(mp + w * D, a_ + w * D, D, full);
            }
        }
        retention_gate(ret, pass, Km, d, dl + b * st[B_DL], dm, fl, tmp);
        for (int64_t n = 0; n < N; n++)
            for (int64_t i = 0; i < D; i++) { Kr[n * D + i] = Km[n * D + i] * ret[n]; Vr[n * D + i] = Vm[n * D + i] * ret[n]; }
        for (int64_t n = 0; n < N; n++) normalize(mr + n * D, Kr + n * D, D, full);
        memset(E, 0, (size_t)(N * D) * sizeof(float));
        memset(gmb, 0, (size_t)(4 * N * D) * sizeof(float));  /* gmb, gmr, gKr, gVr */
        memset(read_hit, 0, (size_t)(2 * N));
        memset(gmp, 0, (size_t)(3 * W * D) * sizeof(float));  /* gmp, gku, gku2 */
        /* E: the summed erase of each slot, from the write weights */
        for (int64_t w = 0; w < W; w++) {
            const int64_t *ci = cidx + w * K;
            softmax(wsm, ctop + w * K, K, ws);
            for (int64_t j = 0; j <= K; j++) {
                int64_t n = j < K ? ci[j] : alloc[w];
                axpy(E + n * D, (j < K ? u[w] * wsm[j] : 1.0f - u[w]) * g[w], e + w * D, D);
            }
        }

        /* write backward: erase then add */
        if (gnK || gnV) {
            for (int64_t x = 0; x < N * D; x++) {
                float keep = 1.0f - (E[x] < 1.0f ? E[x] : 1.0f);
                float gkeep = 0.0f;
                if (gnK) { gKr[x] = gnK[x] * keep; gkeep += gnK[x] * Kr[x]; }
                if (gnV) { gVr[x] = gnV[x] * keep; gkeep += gnV[x] * Vr[x]; }
                E[x] = E[x] <= 1.0f ? -gkeep : 0.0f;  /* E now holds the gradient of the summed erase */
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
                    axpy(gku2 + w * D, gtop[j], mr + ci[j] * D, D);
                    axpy(gmr + ci[j] * D, gtop[j], ku2 + w * D, D);
                    write_hit[ci[j]] = 1;
                }
                normalize_backward(gku + w * D, ku + w * D, gku2 + w * D, D, eps);
            }
            for (int64_t n = 0; n < N; n++)  /* a slot no write kept has no score gradient */
                if (write_hit[n]) normalize_backward(gKr + n * D, Kr + n * D, gmr + n * D, D, full);
        }
        /* retention: Kr = Km * ret, Vr = Vm * ret */
        for (int64_t n = 0; n < N; n++) {
            float gr = gret_out ? gret_out[n] : 0.0f;
            gr += dot(gKr + n * D, Km + n * D, D) + dot(gVr + n * D, Vm + n * D, D);
            for (int64_t i = 0; i < D; i++) {
                gK[n * D + i] += gKr[n * D + i] * ret[n];
                gV[n * D + i] += gVr[n * D + i] * ret[n];
            }
            if (pass[n]) {  /* "learned" and the logit inside its clamp */
                float glogit = gr * ret[n] * (1.0f - ret[n]);
                gdl[n] += glogit;
                normalize(tmp, Km + n * D, D, eps);
                axpy(gd, glogit, tmp, D);
                for (int64_t i = 0; i < D; i++) tmp[i] = glogit * d[i];
                normalize_backward(gK + n * D, Km + n * D, tmp, D, eps);
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
                    axpy(gqh, gtop[j], c < N ? mb + c * D : mp + (c - N) * D, D);
                    axpy(c < N ? gmb + c * D : gmp + (c - N) * D, gtop[j], qh, D);
                    if (c < N) read_hit[c] = 1;
                }
                normalize_backward(gq + i * D, q + i * D, gqh, D, eps);
            }
        for (int64_t n = 0; n < N; n++)  /* a slot no read kept has no score gradient */
            if (read_hit[n]) normalize_backward(gK + n * D, Km + n * D, gmb + n * D, D, full);
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
/* S segments in one call: the step above on each in turn, every pointer advanced by sst[i] bytes per
   segment (0: the same tensor for every segment). The state is a chain of buffers: the caller points
   the state's inputs at segment 0 of a (B, S+1, ...) buffer and its outputs at segment 1 of the same
   one, so that segment s reads what segment s-1 wrote. Returns the largest flag of the steps (a NaN
   score in any segment: the caller takes the loop of single steps). */
int memnet_scan_forward(const int64_t *dm, const float *fl, int64_t b0, int64_t b1, int64_t S, void **p,
                        const int64_t *st, const int64_t *sst) {
    void *ps[F_PTR_COUNT];
    int flag = 0;
    for (int64_t s = 0; s < S && flag < 2; s++) {
        for (int i = 0; i < F_PTR_COUNT; i++) ps[i] = p[i] ? (char *)p[i] + s * sst[i] : NULL;
        int f = memnet_step_forward(dm, fl, b0, b1, ps, st);
        flag = f > flag ? f : flag;
    }
    return flag;
}

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
        int f = memnet_step_backward(dm, fl, b0, b1, ps, sts);
        flag = f > flag ? f : flag;
    }
    return flag;
}
