/* zoft's counter noise on the CPU: the definitions of zoft/perturb/counter.py as one C loop.
 *
 * Entry bits:  h(i) = mix(mix(i ^ k1) + k2), mix = lowbias32 (32-bit words, wrapping).
 * Gaussian:    pair j of a tensor of n entries (m = ceil(n / 2) pairs) is Box-Muller on
 *              u1 = ((h(j) >> 8) + 1) / 2^24, u2 = (mix(h(j) ^ SECOND) >> 8) / 2^24:
 *              entry j gets r cos(2 pi u2), entry m + j (if < n) gets r sin(2 pi u2),
 *              r = sqrt(-2 ln u1); ln, cos and sin are the same short polynomials as counter.py.
 * Rademacher:  entry i is bit (i mod 32) of h(i / 32), as -1 / +1.
 *
 * The integer part is exact; the floating-point part may differ from the torch expressions
 * in the last ulp (the compiler fuses multiply-adds). One call handles a list of tensors,
 * split into equal contiguous ranges of work over `threads` POSIX threads: the per-tensor
 * launch cost of the compiled torch path (about 0.1 ms per tensor and pass) is paid once.
 * Built at first use with the system C compiler (zoft/perturb/native.py); no torch headers.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SECOND 0x5BD1E995u
#define INV_2_24 (1.0f / 16777216.0f)

static inline uint32_t mix(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

static inline uint32_t hash(uint32_t i, uint32_t k1, uint32_t k2) { return mix(mix(i ^ k1) + k2); }

/* x = m 2^e with the mantissa m folded to [sqrt(1/2), sqrt(2)); returns m, sets *e. */
static inline float fold_mantissa(float x, int32_t *e) {
    uint32_t b;
    memcpy(&b, &x, 4);
    uint32_t mb = (b & 0x7FFFFFu) | 0x3F800000u;
    float m;
    memcpy(&m, &mb, 4);
    int big = m > (float)1.4142135623730951;
    *e = (int32_t)((b >> 23) & 0xFF) - 127 + big;
    return big ? m * 0.5f : m;
}

/* ln x for x in (0, 1]: ln m + e ln 2 with m, e from fold_mantissa,
 * ln m = 2 atanh(s) = s * (2 + 2/3 s^2 + 2/5 s^4 + 2/7 s^6 + 2/9 s^8), s = (m - 1) / (m + 1). */
static inline float ln_(float x) {
    int32_t e;
    float m = fold_mantissa(x, &e);
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float series = 2.0f + s2 * ((float)(2.0 / 3) + s2 * ((float)(2.0 / 5) + s2 * ((float)(2.0 / 7) + s2 * (float)(2.0 / 9))));
    return (float)e * (float)0.6931471805599453 + s * series;
}

/* cos and sin of 2 pi u, u in [0, 1): x = 2 pi (u - 1/2) folded to y in [-pi/2, pi/2]. */
static inline void cos_sin_2pi(float u, float *c_out, float *s_out) {
    const float pi = (float)3.141592653589793;
    float x = (float)6.283185307179586 * (u - 0.5f);
    int fold = fabsf(x) > (float)(0.5 * 3.141592653589793);
    float y = fold ? (x > 0.0f ? pi - x : -pi - x) : x;
    float y2 = y * y;
    float c = 1.0f + y2 * ((float)(-1.0 / 2) + y2 * ((float)(1.0 / 24) + y2 * ((float)(-1.0 / 720) + y2 * (
        (float)(1.0 / 40320) + y2 * ((float)(-1.0 / 3628800) + y2 * (float)(1.0 / 479001600))))));
    float s = y * (1.0f + y2 * ((float)(-1.0 / 6) + y2 * ((float)(1.0 / 120) + y2 * ((float)(-1.0 / 5040) + y2 * (
        (float)(1.0 / 362880) + y2 * ((float)(-1.0 / 39916800) + y2 * (float)(1.0 / 6227020800.0)))))));
    *c_out = fold ? c : -c;
    *s_out = -s;
}

static inline void gaussian_pair(uint32_t j, uint32_t k1, uint32_t k2, float *zc, float *zs) {
    uint32_t h = hash(j, k1, k2);
    float u1 = ((float)(int32_t)(h >> 8) + 1.0f) * INV_2_24;
    float u2 = (float)(int32_t)(mix(h ^ SECOND) >> 8) * INV_2_24;
    float r = sqrtf(-2.0f * ln_(u1));
    float c, s;
    cos_sin_2pi(u2, &c, &s);
    *zc = r * c;
    *zs = r * s;
}

/* ---- one tensor, a range of its work units ------------------------------------------- */

/* gaussian_T: pairs [a, b) of a tensor of n entries: p[j] += alpha zc_j, p[m + j] += alpha zs_j
 * rademacher_T: rows [a, b) of 32 entries (the last row may be short)
 * T is float or double; the noise is float32 either way, as the torch path's. */
#define DEFINE_KERNELS(T)                                                                              \
    static void gaussian_##T(T *p, int64_t n, int64_t a, int64_t b, uint32_t k1, uint32_t k2, T alpha) { \
        int64_t m = n - n / 2, both = n / 2 < b ? n / 2 : b;                                            \
        T *second = p + m;                                                                             \
        for (int64_t j = a; j < both; j++) {                                                           \
            float zc, zs;                                                                              \
            gaussian_pair((uint32_t)j, k1, k2, &zc, &zs);                                              \
            p[j] += (T)zc * alpha;                                                                     \
            second[j] += (T)zs * alpha;                                                                \
        }                                                                                              \
        for (int64_t j = both > a ? both : a; j < b; j++) { /* the last pair of an odd n: cosine only */ \
            float zc, zs;                                                                              \
            gaussian_pair((uint32_t)j, k1, k2, &zc, &zs);                                              \
            p[j] += (T)zc * alpha;                                                                     \
        }                                                                                              \
    }                                                                                                  \
    static void rademacher_##T(T *p, int64_t n, int64_t a, int64_t b, uint32_t k1, uint32_t k2, T alpha) { \
        for (int64_t r = a; r < b; r++) {                                                              \
            uint32_t h = hash((uint32_t)r, k1, k2);                                                    \
            T *row = p + 32 * r;                                                                       \
            if (n - 32 * r >= 32) { /* a full row: a fixed trip count, vectorised */                   \
                for (int c = 0; c < 32; c++) row[c] += (T)((int32_t)((h >> c) & 1u) * 2 - 1) * alpha;  \
            } else {                                                                                   \
                for (int c = 0; c < n - 32 * r; c++) row[c] += (T)((int32_t)((h >> c) & 1u) * 2 - 1) * alpha; \
            }                                                                                          \
        }                                                                                              \
    }

DEFINE_KERNELS(float)
DEFINE_KERNELS(double)

/* ---- a list of tensors over threads ----------------------------------------------------- */

enum { GAUSSIAN = 0, RADEMACHER = 1 };
enum { F32 = 0, F64 = 1 };

typedef struct {
    int kind;
    int64_t count;
    void *const *ptrs;
    const int64_t *numels;
    const int32_t *dtypes;
    const uint32_t *k1, *k2;
    const double *alphas;
    int64_t lo, hi; /* this thread's range of work units, counted over the whole list */
} Job;

static int64_t units(int kind, int64_t n) { return kind == GAUSSIAN ? n - n / 2 : (n + 31) / 32; }

static void *run_job(void *arg) {
    const Job *job = (const Job *)arg;
    int64_t start = 0;
    for (int64_t t = 0; t < job->count && start < job->hi; t++) {
        int64_t n = job->numels[t], u = units(job->kind, n);
        int64_t a = job->lo > start ? job->lo - start : 0, b = job->hi - start < u ? job->hi - start : u;
        if (a < b) {
            int f64 = job->dtypes[t] == F64;
            if (job->kind == GAUSSIAN && !f64)
                gaussian_float((float *)job->ptrs[t], n, a, b, job->k1[t], job->k2[t], (float)job->alphas[t]);
            else if (job->kind == GAUSSIAN)
                gaussian_double((double *)job->ptrs[t], n, a, b, job->k1[t], job->k2[t], job->alphas[t]);
            else if (!f64)
                rademacher_float((float *)job->ptrs[t], n, a, b, job->k1[t], job->k2[t], (float)job->alphas[t]);
            else
                rademacher_double((double *)job->ptrs[t], n, a, b, job->k1[t], job->k2[t], job->alphas[t]);
        }
        start += u;
    }
    return NULL;
}

#define MAX_THREADS 256

/* p_t += alphas[t] * noise(kind, key t) for every tensor t; returns 0, or -1 on bad arguments. */
int zoft_counter_add(int kind, int64_t count, void *const *ptrs, const int64_t *numels, const int32_t *dtypes,
                     const uint32_t *k1, const uint32_t *k2, const double *alphas, int threads) {
    if (kind != GAUSSIAN && kind != RADEMACHER) return -1;
    int64_t total = 0;
    for (int64_t t = 0; t < count; t++) total += units(kind, numels[t]);
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if ((int64_t)threads > total / 4096 + 1) threads = (int)(total / 4096 + 1); /* small work: fewer threads */
    Job jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        jobs[i] = (Job){kind, count, ptrs, numels, dtypes, k1, k2, alphas, total * i / threads, total * (i + 1) / threads};
        started[i] = i > 0 && pthread_create(&ids[i], NULL, run_job, &jobs[i]) == 0;
    }
    run_job(&jobs[0]);
    for (int i = 1; i < threads; i++) {
        if (started[i]) pthread_join(ids[i], NULL);
        else run_job(&jobs[i]); /* no thread could be made: do its share here */
    }
    return 0;
}

/* ---- sum of squares of a Gaussian draw (the sphere's radius), thread-count independent -- */

#define CHUNK 65536 /* pairs per partial sum; partials are added in order, so the result does not depend on threads */
#define BLOCK 1024    /* pairs generated into a scratch buffer, then squared into LANES accumulators */
#define LANES 16

typedef struct {
    int64_t n, first_chunk, last_chunk;
    uint32_t k1, k2;
    double *partials;
} SumJob;

static void pairs_f32(float *zc, float *zs, int64_t a, int64_t b, uint32_t k1, uint32_t k2) {
    for (int64_t j = a; j < b; j++) gaussian_pair((uint32_t)j, k1, k2, &zc[j - a], &zs[j - a]);
}

static void *run_sum(void *arg) {
    const SumJob *job = (const SumJob *)arg;
    int64_t m = job->n - job->n / 2;
    float zc[BLOCK], zs[BLOCK];
    for (int64_t c = job->first_chunk; c < job->last_chunk; c++) {
        double acc[LANES] = {0.0};
        int64_t end = (c + 1) * CHUNK < m ? (c + 1) * CHUNK : m;
        for (int64_t base = c * CHUNK; base < end; base += BLOCK) {
            int64_t len = end - base < BLOCK ? end - base : BLOCK;
            pairs_f32(zc, zs, base, base + len, job->k1, job->k2);
            if (base + len == m && job->n % 2) zs[len - 1] = 0.0f; /* the last pair of an odd n has no sine entry */
            for (int64_t i = len; i < (len + LANES - 1) / LANES * LANES; i++) zc[i] = zs[i] = 0.0f;
            for (int64_t i = 0; i < len; i += LANES)
                for (int l = 0; l < LANES; l++) acc[l] += (double)zc[i + l] * zc[i + l] + (double)zs[i + l] * zs[i + l];
        }
        double total = 0.0;
        for (int l = 0; l < LANES; l++) total += acc[l];
        job->partials[c] = total;
    }
    return NULL;
}

double zoft_counter_gaussian_sumsq(int64_t n, uint32_t k1, uint32_t k2, int threads) {
    int64_t m = n - n / 2, chunks = (m + CHUNK - 1) / CHUNK;
    if (chunks == 0) return 0.0;
    double *partials = (double *)calloc((size_t)chunks, sizeof(double));
    if (!partials) return NAN;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > chunks) threads = (int)chunks;
    SumJob jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        jobs[i] = (SumJob){n, chunks * i / threads, chunks * (i + 1) / threads, k1, k2, partials};
        started[i] = i > 0 && pthread_create(&ids[i], NULL, run_sum, &jobs[i]) == 0;
    }
    run_sum(&jobs[0]);
    for (int i = 1; i < threads; i++) {
        if (started[i]) pthread_join(ids[i], NULL);
        else run_sum(&jobs[i]);
    }
    double total = 0.0;
    for (int64_t c = 0; c < chunks; c++) total += partials[c];
    free(partials);
    return total;
}
