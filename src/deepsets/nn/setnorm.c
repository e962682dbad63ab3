/* Fused set norm (+ ReLU) for CPU: forward and backward in the fewest passes over the rows.
 *
 * Compiled on first use by deepsets/nn/kernels.py, once per element type: -DREAL=float or -DREAL=double.
 * Rows of set b are rows off[b] .. off[b+1]-1 of a contiguous [T, D] array. Statistics in double.
 * valid (optional, one byte per row): rows with valid[r] == 0 are padding: ignored by the statistics, zero in
 * the output and in the input gradient. NULL means every row is valid.
 * OpenMP: the library links the OpenMP runtime PyTorch already loaded, so it runs on PyTorch's threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef REAL
#define REAL float
#endif

#define ROW_OK(r) (!valid || valid[r])

#define ROWS 32 /* rows per chunk: 32 x 128 x 4 bytes = 16 KiB, both passes of a chunk stay in L1/L2 */

typedef struct {
    int64_t n, *set, *start, *end, *first; /* first[b]: index of the first chunk of set b; first[B] = n */
} chunks_t;

/* Split every set into chunks of at most ROWS rows; a chunk never spans two sets. */
static int make_chunks(const int64_t *off, int64_t B, chunks_t *c) {
    int64_t n = 0, i = 0;
    for (int64_t b = 0; b < B; b++) n += (off[b + 1] - off[b] + ROWS - 1) / ROWS;
    c->n = n;
    c->set = malloc(sizeof(int64_t) * (size_t)(3 * n + B + 1));
    if (!c->set) return -1;
    c->start = c->set + n;
    c->end = c->start + n;
    c->first = c->end + n;
    c->first[B] = n;
    for (int64_t b = 0; b < B; b++) {
        c->first[b] = i;
        for (int64_t r = off[b]; r < off[b + 1]; r += ROWS) {
            c->set[i] = b;
            c->start[i] = r;
            c->end[i] = r + ROWS < off[b + 1] ? r + ROWS : off[b + 1];
            i++;
        }
    }
    return 0;
}

/* y = (x - mean_b) * rstd_b * w + b (then ReLU), mean/rstd per set written to mean[], rstd[].
 * copy (optional): also receives x, from the same pass (the residual stream of a pre-norm block). */
int setnorm_forward(const REAL *x, REAL *y, const int64_t *off, const uint8_t *valid, int64_t B, int64_t D,
                    const REAL *w, const REAL *bias, double eps, int relu, double *mean, double *rstd,
                    REAL *copy) {
    chunks_t ch;
    if (make_chunks(off, B, &ch)) return -1;
    const int64_t nc = ch.n;
    double *cmean = malloc(sizeof(double) * (size_t)(3 * nc + 1));
    REAL *A = malloc(sizeof(REAL) * (size_t)(2 * B * D + 1));
    if (!cmean || !A) { free(ch.set); free(cmean); free(A); return -1; }
    double *cm2 = cmean + nc, *ccount = cm2 + nc;
    REAL *S = A + B * D;
    const int64_t *first = ch.first;

    /* Set by set, so that the apply pass finds each thread's chunks of the set still in its cache. */
#pragma omp parallel
    for (int64_t b = 0; b < B; b++) {
        const int64_t c0 = first[b], c1 = first[b + 1];
#pragma omp for schedule(static)
        for (int64_t c = c0; c < c1; c++) { /* chunk moments: mean, then squares about it */
            const REAL *p = x + ch.start[c] * D;
            const int64_t rows = ch.end[c] - ch.start[c];
            int64_t nv = 0;
            double s = 0.0;
            for (int64_t r = 0; r < rows; r++) {
                if (!ROW_OK(ch.start[c] + r)) continue;
                nv++;
                REAL acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int64_t d = 0; d < D; d++) acc += p[r * D + d];
                s += acc;
            }
            const double n = (double)(nv * D), m = nv ? s / n : 0.0;
            const REAL mr = (REAL)m;
            double q = 0.0;
            for (int64_t r = 0; r < rows; r++) {
                if (!ROW_OK(ch.start[c] + r)) continue;
                REAL acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int64_t d = 0; d < D; d++) {
                    const REAL t = p[r * D + d] - mr;
                    acc += t * t;
                }
                q += acc;
            }
            const double dm = m - (double)mr;
            cmean[c] = m;
            cm2[c] = q - n * dm * dm; /* squares about m, not about its rounding mr */
            ccount[c] = n;
        }
#pragma omp single
        { /* exact pairwise combination of the set's chunks (Chan et al.) */
            double n = 0.0, mu = 0.0, m2 = 0.0;
            for (int64_t c = c0; c < c1; c++) {
                const double nb = ccount[c], delta = cmean[c] - mu, tot = n + nb;
                if (nb == 0) continue;
                mu += delta * nb / tot;
                m2 += cm2[c] + delta * delta * n * nb / tot;
                n = tot;
            }
            const double var = n > 0 ? (m2 > 0 ? m2 : 0.0) / n : 0.0;
            mean[b] = mu;
            rstd[b] = 1.0 / sqrt(var + eps);
            for (int64_t d = 0; d < D; d++) {
                A[b * D + d] = (REAL)(rstd[b] * w[d]);
                S[b * D + d] = (REAL)(bias[d] - mu * rstd[b] * w[d]);
            }
        }
        const REAL *a = A + b * D, *sh = S + b * D;
#pragma omp for schedule(static)
        for (int64_t c = c0; c < c1; c++) {
            for (int64_t r = ch.start[c]; r < ch.end[c]; r++) {
                const REAL *xr = x + r * D;
                REAL *yr = y + r * D;
                if (copy) {
                    REAL *cr = copy + r * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) cr[d] = xr[d];
                }
                if (!ROW_OK(r)) {
                    for (int64_t d = 0; d < D; d++) yr[d] = 0;
                } else if (relu) {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) {
                        const REAL v = xr[d] * a[d] + sh[d];
                        yr[d] = v > 0 ? v : 0;
                    }
                } else {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) yr[d] = xr[d] * a[d] + sh[d];
                }
            }
        }
    }
    free(ch.set);
    free(cmean);
    free(A);
    return 0;
}

/* Gradients of setnorm_forward. With relu, G = g where the forward's pre-activation x a + s was > 0 (recomputed
 * from x with the same per-set a = rstd w, s = bias - mean rstd w as the forward: no read of the output), else
 * G = g. dx = G rstd w + k_b x + c_b (+ gskip, the gradient of the forward's copy, if given) from the per-set,
 * per-feature sums C = sum_n G and P = sum_n G x. */
int setnorm_backward(const REAL *g, int relu, const REAL *x, const int64_t *off, const uint8_t *valid,
                     int64_t B, int64_t D, const REAL *w, const REAL *bias, const double *mean, const double *rstd,
                     const REAL *gskip, REAL *dx, REAL *dw, REAL *db) {
    chunks_t ch;
    if (make_chunks(off, B, &ch)) return -1;
    const int64_t nc = ch.n;
    REAL *cC = calloc((size_t)(2 * nc * D + 1), sizeof(REAL));
    double *C = calloc((size_t)(2 * B * D + 2 * D + 1), sizeof(double)); /* C, P per set; then dw, db sums */
    REAL *A = malloc(sizeof(REAL) * (size_t)(2 * B * D + 2 * B + 1));
    if (!cC || !C || !A) { free(ch.set); free(cC); free(C); free(A); return -1; }
    REAL *cP = cC + nc * D;
    double *P = C + B * D, *sw = P + B * D, *sb = sw + D;
    REAL *S = A + B * D, *K = S + B * D, *K0 = K + B;

    /* the forward's per-set scale and shift, computed exactly as it did (same roundings) */
    for (int64_t b = 0; b < B; b++)
        for (int64_t d = 0; d < D; d++) {
            A[b * D + d] = (REAL)(rstd[b] * w[d]);
            S[b * D + d] = (REAL)(bias[d] - mean[b] * rstd[b] * w[d]);
        }
    /* Set by set, so that the second pass finds each thread's chunks of the set still in its cache. */
#pragma omp parallel
    for (int64_t b = 0; b < B; b++) {
        const int64_t c0 = ch.first[b], c1 = ch.first[b + 1];
#pragma omp for schedule(static)
        for (int64_t c = c0; c < c1; c++) { /* per chunk: sums of G and of G x over its rows, per feature */
            REAL *accC = cC + c * D, *accP = cP + c * D;
            const REAL *a = A + ch.set[c] * D, *sh = S + ch.set[c] * D;
            for (int64_t r = ch.start[c]; r < ch.end[c]; r++) {
                if (!ROW_OK(r)) continue;
                const REAL *gr = g + r * D, *xr = x + r * D;
                if (relu) {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) {
                        const REAL v = xr[d] * a[d] + sh[d];
                        const REAL gv = v > 0 ? gr[d] : 0;
                        accC[d] += gv;
                        accP[d] += gv * xr[d];
                    }
                } else {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) {
                        accC[d] += gr[d];
                        accP[d] += gr[d] * xr[d];
                    }
                }
            }
        }
#pragma omp single
        {
            double *Cb = C + b * D, *Pb = P + b * D;
            for (int64_t c = c0; c < c1; c++)
                for (int64_t d = 0; d < D; d++) {
                    Cb[d] += cC[c * D + d];
                    Pb[d] += cP[c * D + d];
                }
            int64_t nrows = off[b + 1] - off[b];
            if (valid) {
                nrows = 0;
                for (int64_t r = off[b]; r < off[b + 1]; r++) nrows += valid[r] != 0;
            }
            const double count = (double)(nrows * D);
            double m1 = 0.0, m2 = 0.0;
            for (int64_t d = 0; d < D; d++) {
                const double ph = (Pb[d] - mean[b] * Cb[d]) * rstd[b]; /* sum_n G xhat */
                sw[d] += ph;
                sb[d] += Cb[d];
                m1 += w[d] * Cb[d];
                m2 += w[d] * ph;
            }
            m1 /= count > 0 ? count : 1.0;
            m2 /= count > 0 ? count : 1.0;
            const double k = -rstd[b] * rstd[b] * m2;
            K[b] = (REAL)k;
            K0[b] = (REAL)(-rstd[b] * m1 - k * mean[b]);
        }
        const REAL *a = A + b * D, *sh = S + b * D, k = K[b], k0 = K0[b];
#pragma omp for schedule(static)
        for (int64_t c = c0; c < c1; c++) {
            for (int64_t r = ch.start[c]; r < ch.end[c]; r++) {
                const REAL *gr = g + r * D, *xr = x + r * D, *sk = gskip ? gskip + r * D : NULL;
                REAL *out = dx + r * D;
                if (!ROW_OK(r)) {
                    for (int64_t d = 0; d < D; d++) out[d] = sk ? sk[d] : 0;
                } else if (relu && sk) {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) {
                        const REAL v = xr[d] * a[d] + sh[d];
                        out[d] = (v > 0 ? gr[d] : 0) * a[d] + xr[d] * k + k0 + sk[d];
                    }
                } else if (relu) {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) {
                        const REAL v = xr[d] * a[d] + sh[d];
                        out[d] = (v > 0 ? gr[d] : 0) * a[d] + xr[d] * k + k0;
                    }
                } else if (sk) {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) out[d] = gr[d] * a[d] + xr[d] * k + k0 + sk[d];
                } else {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) out[d] = gr[d] * a[d] + xr[d] * k + k0;
                }
            }
        }
    }
    for (int64_t d = 0; d < D; d++) { /* summed in double, returned in the input's type */
        dw[d] = (REAL)sw[d];
        db[d] = (REAL)sb[d];
    }
    free(ch.set);
    free(cC);
    free(C);
    free(A);
    return 0;
}
