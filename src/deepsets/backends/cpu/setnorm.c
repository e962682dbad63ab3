/* Fused set norm (+ ReLU) for CPU: forward and backward in the fewest passes over the rows.
 *
 * Compiled on first use by deepsets/nn/kernels.py, once per element type: -DREAL=float or -DREAL=double.
 * Rows of set b are rows off[b] .. off[b+1]-1 of a contiguous [T, D] array. Statistics in double.
 * valid (optional, one byte per row): rows with valid[r] == 0 are padding: ignored by the statistics, zero in
 * the output and in the input gradient. NULL means every row is valid.
 * OpenMP: the library links the OpenMP runtime PyTorch already loaded, so it runs on PyTorch's threads.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif

#define ROW_OK(r) (!valid || valid[r])

#define ROWS 32 /* rows per chunk: 32 x 128 x 4 bytes = 16 KiB, both passes of a chunk stay in L1/L2 */

typedef struct { /* first[b]: index of the first tile of set b; first[B] = n */
    int64_t n, rows_max, *set, *start, *end, *first;
} tiles_t;

/* Cut every set into tiles of at most max_rows rows, of balanced sizes; a tile never spans two sets. */
static int make_tiles(const int64_t *off, int64_t B, int64_t max_rows, tiles_t *t) {
    int64_t n = 0, i = 0;
    for (int64_t b = 0; b < B; b++) n += (off[b + 1] - off[b] + max_rows - 1) / max_rows;
    t->n = n;
    t->rows_max = max_rows;
    t->set = malloc(sizeof(int64_t) * (size_t)(3 * n + B + 1));
    if (!t->set) return -1;
    t->start = t->set + n;
    t->end = t->start + n;
    t->first = t->end + n;
    t->first[B] = n;
    for (int64_t b = 0; b < B; b++) {
        const int64_t rows = off[b + 1] - off[b], k = (rows + max_rows - 1) / max_rows;
        t->first[b] = i;
        for (int64_t j = 0; j < k; j++, i++) {
            t->set[i] = b;
            t->start[i] = off[b] + rows * j / k;
            t->end[i] = off[b] + rows * (j + 1) / k;
        }
    }
    return 0;
}

/* Mean and sum of squares about it of rows [rows, D] (rows with v[r] == 0 left out), for an exact per-set
 * combination (Chan et al.); the squares are taken about the rounded mean, then corrected to the exact one. */
static void moments(const REAL *p, const uint8_t *v, int64_t rows, int64_t D, double *mean, double *m2,
                    double *count) {
    double s = 0.0;
    int64_t nv = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (v && !v[r]) continue;
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
        if (v && !v[r]) continue;
        REAL acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < D; d++) {
            const REAL dv = p[r * D + d] - mr;
            acc += dv * dv;
        }
        q += acc;
    }
    const double dm = m - (double)mr;
    *mean = m;
    *m2 = q - n * dm * dm;
    *count = n;
}

/* y = (x - mean_b) * rstd_b * w + b (then ReLU), mean/rstd per set written to mean[], rstd[].
 * copy (optional): also receives x, from the same pass (the residual stream of a pre-norm block). */
int setnorm_forward(const REAL *x, REAL *y, const int64_t *off, const uint8_t *valid, int64_t B, int64_t D,
                    const REAL *w, const REAL *bias, double eps, int relu, double *mean, double *rstd,
                    REAL *copy) {
    tiles_t ch;
    if (make_tiles(off, B, ROWS, &ch)) return -1;
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
            moments(x + ch.start[c] * D, valid ? valid + ch.start[c] : NULL, ch.end[c] - ch.start[c], D, cmean + c,
                    cm2 + c, ccount + c);
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

/* Per-feature sums of G and G x over one chunk's rows, added to C and P (float partial sums over at most ROWS rows,
 * then double). With a (the ReLU after the norm; s its shift), G = g where x a + s > 0, else 0; without, G = g.
 * Padded rows (v[r] == 0) are left out. gated (optional, may be g itself) receives G, 0 in padded rows. */
static void grad_sums(const REAL *g, REAL *gated, const REAL *x, int64_t rows, int64_t D, const REAL *a,
                      const REAL *s, double *C, double *P, REAL *accC, REAL *accP, const uint8_t *v) {
    for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
        const int64_t r1 = r0 + ROWS < rows ? r0 + ROWS : rows;
        for (int64_t d = 0; d < D; d++) accC[d] = accP[d] = 0;
        for (int64_t r = r0; r < r1; r++) {
            const REAL *gr = g + r * D, *xr = x + r * D;
            REAL *out = gated ? gated + r * D : NULL;
            if (v && !v[r]) { /* padding: no gradient through the norm */
                if (out)
                    for (int64_t d = 0; d < D; d++) out[d] = 0;
                continue;
            }
            if (a && out) {
#pragma omp simd
                for (int64_t d = 0; d < D; d++) {
                    const REAL gv = xr[d] * a[d] + s[d] > 0 ? gr[d] : 0;
                    out[d] = gv;
                    accC[d] += gv;
                    accP[d] += gv * xr[d];
                }
            } else if (a) {
#pragma omp simd
                for (int64_t d = 0; d < D; d++) {
                    const REAL gv = xr[d] * a[d] + s[d] > 0 ? gr[d] : 0;
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
        for (int64_t d = 0; d < D; d++) {
            C[d] += accC[d];
            P[d] += accP[d];
        }
    }
}

/* Set b, with nrows valid rows: from its chunks' sums C, P of the gated gradient G (tC, tP: [chunks, D]), the
 * coefficients of dx = G a + k x + k0 (K[2b] = k, K[2b + 1] = k0); adds sum_n G xhat to dw and sum_n G to db. */
static void set_grad_coeffs(const tiles_t *tl, const double *tC, const double *tP, int64_t b, int64_t D,
                            int64_t nrows, double mean, double rstd, const REAL *w, REAL *K, double *dw, double *db) {
    const double count = (double)(nrows * D);
    double m1 = 0.0, m2 = 0.0;
    for (int64_t d = 0; d < D; d++) {
        double Cb = 0.0, Pb = 0.0;
        for (int64_t c = tl->first[b]; c < tl->first[b + 1]; c++) {
            Cb += tC[c * D + d];
            Pb += tP[c * D + d];
        }
        const double ph = (Pb - mean * Cb) * rstd; /* sum_n G xhat */
        dw[d] += ph;
        db[d] += Cb;
        m1 += w[d] * Cb;
        m2 += w[d] * ph;
    }
    m1 /= count > 0 ? count : 1.0;
    m2 /= count > 0 ? count : 1.0;
    const double k = -rstd * rstd * m2;
    K[2 * b] = (REAL)k;
    K[2 * b + 1] = (REAL)(-rstd * m1 - k * mean);
}

/* Number of valid rows of set b. */
static int64_t set_rows(const int64_t *off, const uint8_t *valid, int64_t b) {
    if (!valid) return off[b + 1] - off[b];
    int64_t n = 0;
    for (int64_t r = off[b]; r < off[b + 1]; r++) n += valid[r] != 0;
    return n;
}

/* Gradients of setnorm_forward. With relu, G = g where the forward's pre-activation x a + s was > 0 (recomputed
 * from x with the same per-set a = rstd w, s = bias - mean rstd w as the forward: no read of the output), else
 * G = g. dx = G rstd w + k_b x + c_b (+ gskip, the gradient of the forward's copy, if given) from the per-set,
 * per-feature sums C = sum_n G and P = sum_n G x. */
int setnorm_backward(const REAL *g, int relu, const REAL *x, const int64_t *off, const uint8_t *valid,
                     int64_t B, int64_t D, const REAL *w, const REAL *bias, const double *mean, const double *rstd,
                     const REAL *gskip, REAL *dx, REAL *dw, REAL *db) {
    tiles_t ch;
    if (make_tiles(off, B, ROWS, &ch)) return -1;
    const int64_t nc = ch.n;
    const int nthr = omp_get_max_threads();
    double *cC = calloc((size_t)(2 * nc * D + 2 * D + 1), sizeof(double)); /* C, P per chunk; then dw, db sums */
    REAL *A = malloc(sizeof(REAL) * (size_t)(2 * B * D + 2 * B + 1));
    REAL *acc = malloc(sizeof(REAL) * (size_t)(nthr * 2 * D + 1));
    if (!cC || !A || !acc) { free(ch.set); free(cC); free(A); free(acc); return -1; }
    double *cP = cC + nc * D, *sw = cP + nc * D, *sb = sw + D;
    REAL *S = A + B * D, *K = S + B * D;

    /* the forward's per-set scale and shift, computed exactly as it did (same roundings) */
    for (int64_t b = 0; b < B; b++)
        for (int64_t d = 0; d < D; d++) {
            A[b * D + d] = (REAL)(rstd[b] * w[d]);
            S[b * D + d] = (REAL)(bias[d] - mean[b] * rstd[b] * w[d]);
        }
    /* Set by set, so that the second pass finds each thread's chunks of the set still in its cache. */
#pragma omp parallel num_threads(nthr)
    for (int64_t b = 0; b < B; b++) {
        const int64_t c0 = ch.first[b], c1 = ch.first[b + 1];
        REAL *accC = acc + (int64_t)omp_get_thread_num() * 2 * D, *accP = accC + D;
#pragma omp for schedule(static)
        for (int64_t c = c0; c < c1; c++) /* per chunk: sums of G and of G x over its rows, per feature */
            grad_sums(g + ch.start[c] * D, NULL, x + ch.start[c] * D, ch.end[c] - ch.start[c], D,
                      relu ? A + b * D : NULL, S + b * D, cC + c * D, cP + c * D, accC, accP,
                      valid ? valid + ch.start[c] : NULL);
#pragma omp single
        set_grad_coeffs(&ch, cC, cP, b, D, set_rows(off, valid, b), mean[b], rstd[b], w, K, sw, sb);
        const REAL *a = A + b * D, *sh = S + b * D, k = K[2 * b], k0 = K[2 * b + 1];
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
    free(A);
    free(acc);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * A whole clean-path Deep Sets++ block, out = x + W2 relu(SN2(W1 relu(SN1(x)))), fused around the BLAS GEMM.
 *
 * Rows are cut into tiles (a tile never spans two sets). Each thread normalizes a tile into a private buffer
 * that stays in its cache and multiplies it there (one single-threaded GEMM call per tile), so the normalized
 * activations never go to memory; the statistics of each product are taken from the tile while it is still in
 * cache. The backward pass recomputes the normalized tiles instead of reading saved ones. gemm is the BLAS
 * routine ?gemm_ (Fortran interface) of the library PyTorch uses; its integer arguments are passed as pointers
 * to int64 values, which read the same under LP64 and ILP64 on little-endian machines.
 * ---------------------------------------------------------------------------------------------------------- */

typedef void (*gemm_t)(const char *, const char *, const int64_t *, const int64_t *, const int64_t *, const REAL *,
                       const REAL *, const int64_t *, const REAL *, const int64_t *, const REAL *, REAL *,
                       const int64_t *);

/* Row-major products. C[M][N] = A[M][K] B[N][K]^T + beta C */
static void mm_nt(gemm_t f, int64_t M, int64_t N, int64_t K, const REAL *A, const REAL *B, REAL beta, REAL *C) {
    const REAL one = 1;
    if (M > 0) f("T", "N", &N, &M, &K, &one, B, &K, A, &K, &beta, C, &N);
}
/* C[M][N] = A[M][K] B[K][N] + beta C */
static void mm_nn(gemm_t f, int64_t M, int64_t N, int64_t K, const REAL *A, const REAL *B, REAL beta, REAL *C) {
    const REAL one = 1;
    if (M > 0) f("N", "N", &N, &M, &K, &one, B, &N, A, &K, &beta, C, &N);
}
/* C[M][N] = A[K][M]^T B[K][N] + beta C */
static void mm_tn(gemm_t f, int64_t M, int64_t N, int64_t K, const REAL *A, const REAL *B, REAL beta, REAL *C) {
    const REAL one = 1;
    if (K > 0) f("N", "T", &N, &M, &K, &one, B, &N, A, &M, &beta, C, &N);
}

/* Combine the moments of set b's tiles (tm: means, centered sums of squares, counts; Chan et al.) into its mean
 * st[b] and rstd st[B + b]. */
static void combine_stats(const tiles_t *t, const double *tm, int64_t b, double eps, double *st, int64_t B) {
    const int64_t nt = t->n;
    double n = 0.0, mu = 0.0, m2 = 0.0;
    for (int64_t c = t->first[b]; c < t->first[b + 1]; c++) {
        const double nb = tm[2 * nt + c], delta = tm[c] - mu, tot = n + nb;
        if (nb == 0) continue;
        mu += delta * nb / tot;
        m2 += tm[nt + c] + delta * delta * n * nb / tot;
        n = tot;
    }
    const double var = n > 0 ? (m2 > 0 ? m2 : 0.0) / n : 0.0;
    st[b] = mu;
    st[B + b] = 1.0 / sqrt(var + eps);
}

/* combine_stats, then the per-feature scale and shift a = rstd w, s = bias - mean rstd w that the forward
 * applies to set b (the backward recomputes them alike). */
static void finish_stats(const tiles_t *t, const double *tm, int64_t b, int64_t D, double eps, const REAL *w,
                         const REAL *bias, double *st, int64_t B, REAL *A, REAL *S) {
    combine_stats(t, tm, b, eps, st, B);
    for (int64_t d = 0; d < D; d++) {
        A[b * D + d] = (REAL)(st[B + b] * w[d]);
        S[b * D + d] = (REAL)(bias[d] - st[b] * st[B + b] * w[d]);
    }
}

static void scale_shift(const double *st, int64_t B, int64_t D, const REAL *w, const REAL *bias, REAL *A, REAL *S) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t d = 0; d < D; d++) {
            A[b * D + d] = (REAL)(st[B + b] * w[d]);
            S[b * D + d] = (REAL)(bias[d] - st[b] * st[B + b] * w[d]);
        }
}

/* Called inside a parallel region: the statistics st (mean, rstd per set) of the rows x (computed into st from
 * the tiles' moments, tm: scratch [3 * tiles], unless have), then the scale and shift A, S of the norm (w, b). */
static void input_stats(const tiles_t *tl, const REAL *x, const uint8_t *valid, int64_t B, int64_t D, double eps,
                        const REAL *w, const REAL *b, double *st, int have, double *tm, REAL *A, REAL *S) {
    const int64_t nt = tl->n;
    if (!have) {
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++)
            moments(x + tl->start[c] * D, valid ? valid + tl->start[c] : NULL, tl->end[c] - tl->start[c], D, tm + c,
                    tm + nt + c, tm + 2 * nt + c);
#pragma omp for schedule(static)
        for (int64_t bb = 0; bb < B; bb++) finish_stats(tl, tm, bb, D, eps, w, b, st, B, A, S);
    } else {
#pragma omp single
        scale_shift(st, B, D, w, b, A, S);
    }
}

/* h = relu(x a + s) for a tile's rows */
static void norm_relu(const REAL *x, int64_t rows, int64_t D, const REAL *a, const REAL *s, REAL *h) {
    for (int64_t r = 0; r < rows; r++) {
#pragma omp simd
        for (int64_t d = 0; d < D; d++) {
            const REAL v = x[r * D + d] * a[d] + s[d];
            h[r * D + d] = v > 0 ? v : 0;
        }
    }
}

static int64_t tile_rows(int64_t D) {
    int64_t r = 32768 / (D > 0 ? D : 1); /* a tile buffer of at most 128 KiB (float) */
    return r < 16 ? 16 : (r > 256 ? 256 : r);
}

/* Forward. st_x [2B] (mean, rstd of x per set): read if have_st_x, else computed and written. Writes t = W1
 * relu(SN1(x)) (kept for the backward) with its statistics st_t, and out with its statistics st_out. */
int dsblock_forward(gemm_t gemm, const REAL *x, const int64_t *off, int64_t B, int64_t D, const REAL *w1,
                    const REAL *b1, const REAL *W1, const REAL *w2, const REAL *b2, const REAL *W2, double eps,
                    double *st_x, int have_st_x, REAL *t, double *st_t, REAL *out, double *st_out) {
    tiles_t tl;
    if (make_tiles(off, B, tile_rows(D), &tl)) return -1;
    const int64_t nt = tl.n, TR = tl.rows_max;
    const int nthr = omp_get_max_threads();
    double *tm = malloc(sizeof(double) * (size_t)(3 * nt + 1));
    REAL *AS = malloc(sizeof(REAL) * (size_t)(4 * B * D + 1));
    REAL *buf = malloc(sizeof(REAL) * (size_t)(nthr * TR * D + 1));
    if (!tm || !AS || !buf) { free(tl.set); free(tm); free(AS); free(buf); return -1; }
    REAL *A1 = AS, *S1 = A1 + B * D, *A2 = S1 + B * D, *S2 = A2 + B * D;

#pragma omp parallel num_threads(nthr)
    {
        REAL *h = buf + (int64_t)omp_get_thread_num() * TR * D;
        input_stats(&tl, x, NULL, B, D, eps, w1, b1, st_x, have_st_x, tm, A1, S1);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++) { /* t = W1 relu(SN1(x)), and its moments */
            const int64_t r0 = tl.start[c], rows = tl.end[c] - r0, b = tl.set[c];
            norm_relu(x + r0 * D, rows, D, A1 + b * D, S1 + b * D, h);
            mm_nt(gemm, rows, D, D, h, W1, 0, t + r0 * D);
            moments(t + r0 * D, NULL, rows, D, tm + c, tm + nt + c, tm + 2 * nt + c);
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) finish_stats(&tl, tm, b, D, eps, w2, b2, st_t, B, A2, S2);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++) { /* out = x + W2 relu(SN2(t)), and its moments */
            const int64_t r0 = tl.start[c], rows = tl.end[c] - r0, b = tl.set[c];
            norm_relu(t + r0 * D, rows, D, A2 + b * D, S2 + b * D, h);
            memcpy(out + r0 * D, x + r0 * D, sizeof(REAL) * (size_t)(rows * D));
            mm_nt(gemm, rows, D, D, h, W2, 1, out + r0 * D);
            moments(out + r0 * D, NULL, rows, D, tm + c, tm + nt + c, tm + 2 * nt + c);
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) combine_stats(&tl, tm, b, eps, st_out, B); /* for the next block */
    }
    free(tl.set);
    free(tm);
    free(AS);
    free(buf);
    return 0;
}

/* Backward of dsblock_forward, from the gradient G of out. gbuf: scratch [T, D]. Writes dx and the gradients
 * of the six parameters (dW1, dW2 [D, D]; dw1, db1, dw2, db2 [D]). */
int dsblock_backward(gemm_t gemm, const REAL *G, const REAL *x, const REAL *t, const int64_t *off, int64_t B,
                     int64_t D, const REAL *w1, const REAL *b1, const REAL *W1, const REAL *w2, const REAL *b2,
                     const REAL *W2, const double *st_x, const double *st_t, REAL *gbuf, REAL *dx, REAL *dW1,
                     REAL *dW2, REAL *dw1, REAL *db1, REAL *dw2, REAL *db2) {
    tiles_t tl;
    if (make_tiles(off, B, tile_rows(D), &tl)) return -1;
    const int64_t nt = tl.n, TR = tl.rows_max;
    const int nthr = omp_get_max_threads();
    double *sums = calloc((size_t)(2 * nt * D + 4 * D + 1), sizeof(double));
    REAL *AS = malloc(sizeof(REAL) * (size_t)(4 * B * D + 4 * B + 1));
    REAL *buf = malloc(sizeof(REAL) * (size_t)(nthr * (2 * TR * D + 2 * D) + 1));
    REAL *acc = calloc((size_t)(nthr * 2 * D * D + 1), sizeof(REAL)); /* per-thread dW2, dW1 */
    if (!sums || !AS || !buf || !acc) { free(tl.set); free(sums); free(AS); free(buf); free(acc); return -1; }
    double *tC = sums, *tP = tC + nt * D, *sw2 = tP + nt * D, *sb2 = sw2 + D, *sw1 = sb2 + D, *sb1 = sw1 + D;
    REAL *A1 = AS, *S1 = A1 + B * D, *A2 = S1 + B * D, *S2 = A2 + B * D, *K2 = S2 + B * D, *K1 = K2 + 2 * B;
    scale_shift(st_x, B, D, w1, b1, A1, S1);
    scale_shift(st_t, B, D, w2, b2, A2, S2);

#pragma omp parallel num_threads(nthr)
    {
        const int me = omp_get_thread_num();
        REAL *h = buf + (int64_t)me * (2 * TR * D + 2 * D), *dt = h + TR * D, *accC = dt + TR * D, *accP = accC + D;
        REAL *aW2 = acc + (int64_t)me * 2 * D * D, *aW1 = aW2 + D * D;
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++) { /* second layer: dW2 += G^T h2, g2 = gate(G W2) */
            const int64_t r0 = tl.start[c], rows = tl.end[c] - r0, b = tl.set[c];
            norm_relu(t + r0 * D, rows, D, A2 + b * D, S2 + b * D, h);
            mm_tn(gemm, D, D, rows, G + r0 * D, h, 1, aW2);
            mm_nn(gemm, rows, D, D, G + r0 * D, W2, 0, gbuf + r0 * D);
            grad_sums(gbuf + r0 * D, gbuf + r0 * D, t + r0 * D, rows, D, A2 + b * D, S2 + b * D, tC + c * D,
                      tP + c * D, accC, accP, NULL);
        }
#pragma omp single
        for (int64_t b = 0; b < B; b++)
            set_grad_coeffs(&tl, tC, tP, b, D, off[b + 1] - off[b], st_t[b], st_t[B + b], w2, K2, sw2, sb2);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++) { /* first layer: dt from g2, dW1 += dt^T h1, g1 = gate(dt W1) */
            const int64_t r0 = tl.start[c], rows = tl.end[c] - r0, b = tl.set[c];
            const REAL *a = A2 + b * D, k = K2[2 * b], k0 = K2[2 * b + 1];
            for (int64_t r = 0; r < rows; r++) {
                const REAL *gr = gbuf + (r0 + r) * D, *tr = t + (r0 + r) * D;
                REAL *o = dt + r * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) o[d] = gr[d] * a[d] + tr[d] * k + k0;
            }
            for (int64_t d = 0; d < D; d++) tC[c * D + d] = tP[c * D + d] = 0;
            norm_relu(x + r0 * D, rows, D, A1 + b * D, S1 + b * D, h);
            mm_tn(gemm, D, D, rows, dt, h, 1, aW1);
            mm_nn(gemm, rows, D, D, dt, W1, 0, gbuf + r0 * D);
            grad_sums(gbuf + r0 * D, gbuf + r0 * D, x + r0 * D, rows, D, A1 + b * D, S1 + b * D, tC + c * D,
                      tP + c * D, accC, accP, NULL);
        }
#pragma omp single
        for (int64_t b = 0; b < B; b++)
            set_grad_coeffs(&tl, tC, tP, b, D, off[b + 1] - off[b], st_x[b], st_x[B + b], w1, K1, sw1, sb1);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++) { /* dx = g1 a1 + k x + k0 + G (the clean path) */
            const int64_t b = tl.set[c];
            const REAL *a = A1 + b * D, k = K1[2 * b], k0 = K1[2 * b + 1];
            for (int64_t r = tl.start[c]; r < tl.end[c]; r++) {
                const REAL *gr = gbuf + r * D, *xr = x + r * D, *Gr = G + r * D;
                REAL *o = dx + r * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) o[d] = gr[d] * a[d] + xr[d] * k + k0 + Gr[d];
            }
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < D * D; i++) { /* sum the threads' weight gradients */
            REAL s2 = 0, s1 = 0;
            for (int j = 0; j < nthr; j++) {
                s2 += acc[(int64_t)j * 2 * D * D + i];
                s1 += acc[(int64_t)j * 2 * D * D + D * D + i];
            }
            dW2[i] = s2;
            dW1[i] = s1;
        }
    }
    for (int64_t d = 0; d < D; d++) {
        dw2[d] = (REAL)sw2[d];
        db2[d] = (REAL)sb2[d];
        dw1[d] = (REAL)sw1[d];
        db1[d] = (REAL)sb1[d];
    }
    free(tl.set);
    free(sums);
    free(AS);
    free(buf);
    free(acc);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * y = [x +] act2(W act1(SN(x)) [+ bias]): a set norm feeding a linear layer (attention projections, feed-forward
 * layers), fused the same way: normalized tiles stay in cache. flags: 1 = ReLU after the norm (act1), 2 = ReLU
 * after the product (act2), 4 = add x (residual; needs N == D). W is [N, D]. gate (with act2, optional): one byte
 * per output value, 1 where the ReLU passed (what the backward needs). st_y (optional, residual only): per-set
 * mean and rstd of y.
 * ---------------------------------------------------------------------------------------------------------- */
#define NL_RELU_IN 1
#define NL_RELU_OUT 2
#define NL_RESIDUAL 4
#define VROW(r) (valid ? valid + (r) : NULL) /* validity of the rows from row r on */

static void norm_apply(const REAL *x, int64_t rows, int64_t D, const REAL *a, const REAL *s, int relu, REAL *h,
                       const uint8_t *v) {
    if (v) { /* padded rows normalize to zero */
        for (int64_t r = 0; r < rows; r++) {
            if (v[r]) norm_apply(x + r * D, 1, D, a, s, relu, h + r * D, NULL);
            else memset(h + r * D, 0, sizeof(REAL) * (size_t)D);
        }
        return;
    }
    if (relu) {
        norm_relu(x, rows, D, a, s, h);
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
#pragma omp simd
        for (int64_t d = 0; d < D; d++) h[r * D + d] = x[r * D + d] * a[d] + s[d];
    }
}

int normlinear_forward(gemm_t gemm, const REAL *x, const int64_t *off, const uint8_t *valid, int64_t B, int64_t D,
                       int64_t N, const REAL *w, const REAL *b, const REAL *W, const REAL *bias, double eps,
                       int flags, double *st_x, int have_st_x, REAL *y, uint8_t *gate, double *st_y) {
    tiles_t tl;
    if (make_tiles(off, B, tile_rows(D > N ? D : N), &tl)) return -1;
    const int64_t nt = tl.n, TR = tl.rows_max;
    const int nthr = omp_get_max_threads();
    double *tm = malloc(sizeof(double) * (size_t)(3 * nt + 1));
    REAL *AS = malloc(sizeof(REAL) * (size_t)(2 * B * D + 1));
    REAL *buf = malloc(sizeof(REAL) * (size_t)(nthr * TR * D + 1));
    if (!tm || !AS || !buf) { free(tl.set); free(tm); free(AS); free(buf); return -1; }
    REAL *A = AS, *S = A + B * D;
#pragma omp parallel num_threads(nthr)
    {
        REAL *h = buf + (int64_t)omp_get_thread_num() * TR * D;
        input_stats(&tl, x, valid, B, D, eps, w, b, st_x, have_st_x, tm, A, S);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++) {
            const int64_t r0 = tl.start[c], rows = tl.end[c] - r0, s = tl.set[c];
            REAL *yt = y + r0 * N;
            norm_apply(x + r0 * D, rows, D, A + s * D, S + s * D, flags & NL_RELU_IN, h, VROW(r0));
            if (bias) {
                for (int64_t r = 0; r < rows; r++) memcpy(yt + r * N, bias, sizeof(REAL) * (size_t)N);
            } else {
                memset(yt, 0, sizeof(REAL) * (size_t)(rows * N));
            }
            mm_nt(gemm, rows, N, D, h, W, 1, yt);
            if (flags & NL_RELU_OUT) {
                uint8_t *gt = gate ? gate + r0 * N : NULL;
                for (int64_t i = 0; i < rows * N; i++) {
                    const int on = yt[i] > 0;
                    if (gt) gt[i] = (uint8_t)on;
                    yt[i] = on ? yt[i] : 0;
                }
            }
            if (flags & NL_RESIDUAL) {
                const REAL *xt = x + r0 * D;
#pragma omp simd
                for (int64_t i = 0; i < rows * N; i++) yt[i] += xt[i];
                if (st_y) moments(yt, VROW(r0), rows, N, tm + c, tm + nt + c, tm + 2 * nt + c);
            }
        }
        if ((flags & NL_RESIDUAL) && st_y) {
#pragma omp for schedule(static)
            for (int64_t bb = 0; bb < B; bb++) combine_stats(&tl, tm, bb, eps, st_y, B);
        }
    }
    free(tl.set);
    free(tm);
    free(AS);
    free(buf);
    return 0;
}

/* Backward of normlinear_forward from G = dL/dy [T, N]. gate: as written by the forward (needed with
 * NL_RELU_OUT). gbuf: scratch [T, D]. Writes dx [T, D], dW [N, D], dbias [N] (if bias), dw, db [D]. */
int normlinear_backward(gemm_t gemm, const REAL *G, const REAL *x, const int64_t *off, const uint8_t *valid,
                        int64_t B, int64_t D, int64_t N, const REAL *w, const REAL *b, const REAL *W, int has_bias,
                        int flags, const double *st_x, const uint8_t *gate, REAL *gbuf, REAL *dx, REAL *dW, REAL *dbias,
                        REAL *dw, REAL *db) {
    tiles_t tl;
    if (make_tiles(off, B, tile_rows(D > N ? D : N), &tl)) return -1;
    const int64_t nt = tl.n, TR = tl.rows_max, E = D > N ? D : N;
    const int nthr = omp_get_max_threads();
    const int64_t per = 2 * TR * E + 2 * D + N;
    double *sums = calloc((size_t)(2 * nt * D + 2 * D + 1), sizeof(double));
    double *dbs = calloc((size_t)(nthr * N + 1), sizeof(double));
    REAL *AS = malloc(sizeof(REAL) * (size_t)(2 * B * D + 2 * B + 1));
    REAL *buf = malloc(sizeof(REAL) * (size_t)(nthr * per + 1));
    REAL *acc = calloc((size_t)(nthr * N * D + 1), sizeof(REAL));
    if (!sums || !dbs || !AS || !buf || !acc) {
        free(tl.set); free(sums); free(dbs); free(AS); free(buf); free(acc);
        return -1;
    }
    double *tC = sums, *tP = tC + nt * D, *sw = tP + nt * D, *sb = sw + D;
    REAL *A = AS, *S = A + B * D, *K = S + B * D;
    scale_shift(st_x, B, D, w, b, A, S);
    const int relu_in = flags & NL_RELU_IN;
#pragma omp parallel num_threads(nthr)
    {
        const int me = omp_get_thread_num();
        REAL *h = buf + (int64_t)me * per, *dz = h + TR * E, *accC = dz + TR * E, *accP = accC + D, *accB = accP + D;
        REAL *aW = acc + (int64_t)me * N * D;
        double *tb = dbs + (int64_t)me * N;
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++) {
            const int64_t r0 = tl.start[c], rows = tl.end[c] - r0, s = tl.set[c];
            const REAL *Gt = G + r0 * N;
            if (flags & NL_RELU_OUT) {
                const uint8_t *gt = gate + r0 * N;
                for (int64_t i = 0; i < rows * N; i++) dz[i] = gt[i] ? Gt[i] : 0;
                Gt = dz;
            }
            if (has_bias) {
                for (int64_t r0b = 0; r0b < rows; r0b += ROWS) {
                    const int64_t r1 = r0b + ROWS < rows ? r0b + ROWS : rows;
                    for (int64_t j = 0; j < N; j++) accB[j] = 0;
                    for (int64_t r = r0b; r < r1; r++) {
#pragma omp simd
                        for (int64_t j = 0; j < N; j++) accB[j] += Gt[r * N + j];
                    }
                    for (int64_t j = 0; j < N; j++) tb[j] += accB[j];
                }
            }
            norm_apply(x + r0 * D, rows, D, A + s * D, S + s * D, relu_in, h, VROW(r0));
            mm_tn(gemm, N, D, rows, Gt, h, 1, aW);                      /* dW += dz^T h */
            mm_nn(gemm, rows, D, N, Gt, W, 0, gbuf + r0 * D);            /* dh = dz W */
            grad_sums(gbuf + r0 * D, gbuf + r0 * D, x + r0 * D, rows, D, relu_in ? A + s * D : NULL, S + s * D,
                      tC + c * D, tP + c * D, accC, accP, VROW(r0));
        }
#pragma omp single
        for (int64_t bb = 0; bb < B; bb++)
            set_grad_coeffs(&tl, tC, tP, bb, D, set_rows(off, valid, bb), st_x[bb], st_x[B + bb], w, K, sw, sb);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++) {
            const int64_t s = tl.set[c];
            const REAL *a = A + s * D, k = K[2 * s], k0 = K[2 * s + 1];
            for (int64_t r = tl.start[c]; r < tl.end[c]; r++) {
                const REAL *gr = gbuf + r * D, *xr = x + r * D;
                REAL *o = dx + r * D;
                if (valid && !valid[r]) { /* padding: only the residual path */
                    for (int64_t d = 0; d < D; d++) o[d] = (flags & NL_RESIDUAL) ? G[r * N + d] : 0;
                } else if (flags & NL_RESIDUAL) {
                    const REAL *Gr = G + r * N;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) o[d] = gr[d] * a[d] + xr[d] * k + k0 + Gr[d];
                } else {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) o[d] = gr[d] * a[d] + xr[d] * k + k0;
                }
            }
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N * D; i++) {
            REAL sacc = 0;
            for (int j = 0; j < nthr; j++) sacc += acc[(int64_t)j * N * D + i];
            dW[i] = sacc;
        }
    }
    for (int64_t d = 0; d < D; d++) {
        dw[d] = (REAL)sw[d];
        db[d] = (REAL)sb[d];
    }
    if (has_bias)
        for (int64_t j = 0; j < N; j++) {
            double sacc = 0.0;
            for (int t = 0; t < nthr; t++) sacc += dbs[(int64_t)t * N + j];
            dbias[j] = (REAL)sacc;
        }
    free(tl.set);
    free(sums);
    free(dbs);
    free(AS);
    free(buf);
    free(acc);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * One huge set (deepsets/backends/huge.py): rows x [n, D] of a single set, processed in place, tile by tile, so
 * that memory holds one [n, D] activation and per-thread tiles. A clean-path Deep Sets++ block
 * x <- x + W2 relu(SN2(t)), t = W1 relu(SN1(x)), takes two passes: huge_sums gives the sums and the Gram matrix
 * of u = relu(SN1(x)) - c (c: a per-feature shift near the mean of relu(SN1(x)), so that the Gram matrix is
 * nearly a covariance and its float partial sums lose nothing to cancellation), from which the mean and variance
 * of t = W1 u + W1 c follow exactly (huge.py); huge_block then applies the block in place and returns the
 * statistics of its output for the next block. Float partial sums over one tile, double across tiles.
 * ---------------------------------------------------------------------------------------------------------- */

/* Row-major C[M][N] = A^T B for sub-blocks: A is [K][lda] (its first M columns), B is [K][ldb] (first N). */
static void mm_tn_ld(gemm_t f, int64_t M, int64_t N, int64_t K, const REAL *A, int64_t lda, const REAL *B,
                     int64_t ldb, REAL *C, int64_t ldc) {
    const REAL one = 1, zero = 0;
    if (M > 0 && N > 0 && K > 0) f("N", "T", &N, &M, &K, &one, B, &ldb, A, &lda, &zero, C, &ldc);
}

/* Mean st[0] and variance st[1] of all values of x [n, D]. */
int huge_moments(const REAL *x, int64_t n, int64_t D, double *st) {
    const int64_t off[2] = {0, n};
    tiles_t tl;
    if (make_tiles(off, 1, tile_rows(D), &tl)) return -1;
    const int64_t nt = tl.n;
    double *tm = malloc(sizeof(double) * (size_t)(3 * nt + 1));
    if (!tm) { free(tl.set); return -1; }
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nt; c++)
        moments(x + tl.start[c] * D, NULL, tl.end[c] - tl.start[c], D, tm + c, tm + nt + c, tm + 2 * nt + c);
    combine_stats(&tl, tm, 0, 0.0, st, 1);
    st[1] = isfinite(st[1]) && st[1] > 0 ? 1.0 / (st[1] * st[1]) : 0.0; /* rstd without eps -> variance */
    free(tl.set);
    free(tm);
    return 0;
}

/* With u = relu(x a + s) - c per row (c may be NULL: no shift): sum[D] = sum_n u and, if gram is not NULL,
 * gram[D][D] = sum_n u u^T (the blocks on and above the diagonal by GEMM, 5/8 of one full product; mirrored). */
int huge_sums(gemm_t gemm, const REAL *x, int64_t n, int64_t D, const REAL *a, const REAL *s, const REAL *c,
              double *sum, double *gram) {
    const int64_t off[2] = {0, n};
    tiles_t tl;
    if (make_tiles(off, 1, tile_rows(D), &tl)) return -1;
    const int64_t nt = tl.n, TR = tl.rows_max, G = gram ? D * D : 0;
    const int64_t BS = D >= 4 ? (D + 3) / 4 : D; /* 4 block rows: (4 + 1) / 8 of a full product */
    const int nthr = omp_get_max_threads();
    const int64_t per = TR * D + G + D;
    REAL *buf = malloc(sizeof(REAL) * (size_t)(nthr * per + 1));
    double *acc = calloc((size_t)(nthr * (G + D) + 1), sizeof(double));
    if (!buf || !acc) { free(tl.set); free(buf); free(acc); return -1; }
#pragma omp parallel num_threads(nthr)
    {
        const int me = omp_get_thread_num();
        REAL *h = buf + (int64_t)me * per, *g = h + TR * D, *rs = g + G;
        double *ag = acc + (int64_t)me * (G + D), *as = ag + G;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nt; t++) {
            const int64_t r0 = tl.start[t], rows = tl.end[t] - r0;
            const REAL *xt = x + r0 * D;
            for (int64_t d = 0; d < D; d++) rs[d] = 0;
            for (int64_t r = 0; r < rows; r++) {
                REAL *hr = h + r * D;
                const REAL *xr = xt + r * D;
                if (c) {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) {
                        const REAL v = xr[d] * a[d] + s[d];
                        hr[d] = (v > 0 ? v : 0) - c[d];
                        rs[d] += hr[d];
                    }
                } else {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) {
                        const REAL v = xr[d] * a[d] + s[d];
                        hr[d] = v > 0 ? v : 0;
                        rs[d] += hr[d];
                    }
                }
            }
            for (int64_t d = 0; d < D; d++) as[d] += rs[d];
            if (gram) /* block row i0..i1: columns i0..D (the upper triangle by blocks) */
                for (int64_t i0 = 0; i0 < D; i0 += BS) {
                    const int64_t i1 = i0 + BS < D ? i0 + BS : D;
                    mm_tn_ld(gemm, i1 - i0, D - i0, rows, h + i0, D, h + i0, D, g + i0 * D + i0, D);
                    for (int64_t i = i0; i < i1; i++)
                        for (int64_t j = i0; j < D; j++) ag[i * D + j] += g[i * D + j];
                }
        }
    }
    for (int64_t k = 0; k < G + D; k++) {
        double v = 0.0;
        for (int j = 0; j < nthr; j++) v += acc[(int64_t)j * (G + D) + k];
        if (k < G) gram[k] = v; else sum[k - G] = v;
    }
    if (gram) /* mirror below the diagonal blocks */
        for (int64_t i = 0; i < D; i++)
            for (int64_t j = 0; j < (i / BS) * BS; j++) gram[i * D + j] = gram[j * D + i];
    free(tl.set);
    free(buf);
    free(acc);
    return 0;
}

/* x <- x + W2 relu(t a2 + s2), t = W1 relu(x a1 + s1), in place (W1, W2: [D, D]); st: mean and rstd (eps) of the
 * new x. */
int huge_block(gemm_t gemm, REAL *x, int64_t n, int64_t D, const REAL *a1, const REAL *s1, const REAL *W1,
               const REAL *a2, const REAL *s2, const REAL *W2, double eps, double *st) {
    const int64_t off[2] = {0, n};
    tiles_t tl;
    if (make_tiles(off, 1, tile_rows(D), &tl)) return -1;
    const int64_t nt = tl.n, TR = tl.rows_max;
    const int nthr = omp_get_max_threads();
    double *tm = malloc(sizeof(double) * (size_t)(3 * nt + 1));
    REAL *buf = malloc(sizeof(REAL) * (size_t)(nthr * 2 * TR * D + 1));
    if (!tm || !buf) { free(tl.set); free(tm); free(buf); return -1; }
#pragma omp parallel num_threads(nthr)
    {
        REAL *h = buf + (int64_t)omp_get_thread_num() * 2 * TR * D, *tt = h + TR * D;
#pragma omp for schedule(static)
        for (int64_t c = 0; c < nt; c++) {
            const int64_t r0 = tl.start[c], rows = tl.end[c] - r0;
            REAL *xt = x + r0 * D;
            norm_relu(xt, rows, D, a1, s1, h);
            mm_nt(gemm, rows, D, D, h, W1, 0, tt);
            norm_relu(tt, rows, D, a2, s2, h);
            mm_nt(gemm, rows, D, D, h, W2, 1, xt);
            moments(xt, NULL, rows, D, tm + c, tm + nt + c, tm + 2 * nt + c);
        }
    }
    combine_stats(&tl, tm, 0, eps, st, 1);
    free(tl.set);
    free(tm);
    free(buf);
    return 0;
}
