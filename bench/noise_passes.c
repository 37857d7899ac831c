/* Micro-benchmark of bench/noise_passes.py: one pass over N float32 entries, OpenMP threads.
 *
 * Compiled by noise_passes.py after zoft's own kernel source (src/zoft/perturb/counter_kernel.c),
 * so `gaussian_pair`, `hash`, `mix`, `ln_`, `gaussian_float` and `rademacher_float` are zoft's.
 *
 *   add                p += alpha                                  (the memory floor of a pass)
 *   rademacher         p += alpha z, zoft's kernel                 (one pass of a ZO-SGD step)
 *   rademacher_fused   p += alpha z + beta y, two keys, one pass   (restore+update fused with the
 *                                                                   next step's perturbation)
 *   gaussian, gaussian_fused                                       (the same with Gaussian noise)
 *   gaussian_short     p += alpha z with cheaper arithmetic: a division-free logarithm and a sine /
 *                      cosine on [-pi/4, pi/4] after an integer octant reduction (a different,
 *                      not bitwise-equal definition of the same distribution; measured only)
 *
 * Usage: noise_passes N REPEATS; prints "name seconds" lines, the median of REPEATS per variant.
 */
#include <omp.h>
#include <stdio.h>

static void pass_add(float *p, int64_t n, float alpha) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) p[i] += alpha;
}

static void pass_rademacher(float *p, int64_t n, float alpha) {
    int64_t rows = (n + 31) / 32;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), k = omp_get_num_threads();
        rademacher_float(p, n, rows * t / k, rows * (t + 1) / k, 1u, 2u, alpha);
    }
}

static void pass_rademacher_fused(float *p, int64_t n, float alpha, float beta) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n / 32; r++) {
        uint32_t h = hash((uint32_t)r, 1u, 2u), g = hash((uint32_t)r, 3u, 4u);
        float *row = p + 32 * r;
        for (int c = 0; c < 32; c++)
            row[c] += (float)((int32_t)((h >> c) & 1u) * 2 - 1) * alpha + (float)((int32_t)((g >> c) & 1u) * 2 - 1) * beta;
    }
}

static void pass_gaussian(float *p, int64_t n, float alpha) {
    int64_t pairs = n - n / 2;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), k = omp_get_num_threads();
        gaussian_float(p, n, pairs * t / k, pairs * (t + 1) / k, 1u, 2u, alpha);
    }
}

static void pass_gaussian_fused(float *p, int64_t n, float alpha, float beta) {
    float *second = p + (n - n / 2);
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n / 2; j++) {
        float zc, zs, yc, ys;
        gaussian_pair((uint32_t)j, 1u, 2u, &zc, &zs);
        gaussian_pair((uint32_t)j, 3u, 4u, &yc, &ys);
        p[j] += zc * alpha + yc * beta;
        second[j] += zs * alpha + ys * beta;
    }
}

/* ln x, x in (0, 1]: cephes' logf polynomial on the folded mantissa, no division */
static inline float ln_short(float x) {
    int32_t e;
    float m = fold_mantissa(x, &e);
    float t = m - 1.0f, z = t * t;
    float y = 7.0376836292E-2f;
    y = y * t - 1.1514610310E-1f;
    y = y * t + 1.1676998740E-1f;
    y = y * t - 1.2420140846E-1f;
    y = y * t + 1.4249322787E-1f;
    y = y * t - 1.6668057665E-1f;
    y = y * t + 2.0000714765E-1f;
    y = y * t - 2.4999993993E-1f;
    y = y * t + 3.3333331174E-1f;
    return t + (y * t * z - 0.5f * z) + (float)e * 0.69314718056f;
}

static inline void gaussian_pair_short(uint32_t j, float *zc, float *zs) {
    uint32_t h = hash(j, 1u, 2u);
    float u1 = ((float)(int32_t)(h >> 8) + 1.0f) * INV_2_24;
    uint32_t w = mix(h ^ SECOND) >> 8, t = w + (1u << 21), q = (t >> 22) & 3u; /* angle 2 pi w / 2^24 */
    float x = (float)((int32_t)w - (int32_t)((t >> 22) << 22)) * (float)(6.283185307179586 / 16777216.0);
    float x2 = x * x;
    float s = x + x * x2 * (-1.6666654611E-1f + x2 * (8.3321608736E-3f + x2 * -1.9515295891E-4f));
    float c = 1.0f - 0.5f * x2 + x2 * x2 * (4.166664568298827E-2f + x2 * (-1.388731625493765E-3f + x2 * 2.443315711809948E-5f));
    float r = sqrtf(-2.0f * ln_short(u1));
    float cc = (q & 1u) ? s : c, ss = (q & 1u) ? c : s;
    *zc = r * ((((q + 1u) >> 1) & 1u) ? -cc : cc);
    *zs = r * ((q >> 1) ? -ss : ss);
}

static void pass_gaussian_short(float *p, int64_t n, float alpha) {
    float *second = p + (n - n / 2);
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n / 2; j++) {
        float zc, zs;
        gaussian_pair_short((uint32_t)j, &zc, &zs);
        p[j] += zc * alpha;
        second[j] += zs * alpha;
    }
}

static double seconds(void) { return omp_get_wtime(); }

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s N REPEATS\n", argv[0]);
        return 2;
    }
    int64_t n = atoll(argv[1]) / 64 * 64;
    int repeats = atoi(argv[2]);
    if (n <= 0 || repeats < 1 || repeats > 100) {
        fprintf(stderr, "N must be >= 64 and REPEATS in 1..100\n");
        return 2;
    }
    float *p = (float *)malloc((size_t)n * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory for %lld floats\n", (long long)n);
        return 1;
    }
    pass_add(p, n, 0.0f); /* first touch, over the same threads as the passes */
    for (int64_t i = 0; i < n; i++) p[i] = 1.0f;
    const char *names[] = {"add", "rademacher", "rademacher_fused", "gaussian", "gaussian_fused", "gaussian_short"};
    double times[6][100];
    for (int r = 0; r < repeats; r++) { /* variants interleaved, so that a slow spell hits them all */
        for (int v = 0; v < 6; v++) {
            double t0 = seconds();
            switch (v) {
                case 0: pass_add(p, n, 1e-9f); break;
                case 1: pass_rademacher(p, n, 1e-9f); break;
                case 2: pass_rademacher_fused(p, n, 1e-9f, -1e-9f); break;
                case 3: pass_gaussian(p, n, 1e-9f); break;
                case 4: pass_gaussian_fused(p, n, 1e-9f, -1e-9f); break;
                default: pass_gaussian_short(p, n, 1e-9f); break;
            }
            times[v][r] = seconds() - t0;
        }
    }
    for (int v = 0; v < 6; v++) {
        qsort(times[v], (size_t)repeats, sizeof(double), by_value);
        printf("%s %.6f %.6f %.6f\n", names[v], times[v][repeats / 2], times[v][0], times[v][repeats - 1]);
    }
    double check = 0.0; /* keeps the passes from being optimised away */
    for (int64_t i = 0; i < n; i += 4096) check += p[i];
    fprintf(stderr, "checksum %.6f\n", check);
    free(p);
    return 0;
}
