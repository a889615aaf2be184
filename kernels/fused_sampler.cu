// Fused sampler loop for analytic Gaussian-mixture targets: one thread per particle.
//
// Reference twin: refdiff/samplers/fused.py (run_table); launcher: kernels/fused_cupy.py.
// Self-contained (no #include): compiled by CuPy's RawModule (NVRTC) with
// name_expressions "fused_run<float, MAXD, FULL, FAR>" / "fused_run<double, MAXD, FULL, FAR>" (FULL: full
// covariances, whose eigenvectors the score reads), and by nvcc in the test suite. Each thread keeps its
// particle's state, score and previous score in arrays of a compile-time bound MAXD >= D (in registers up
// to MAXD = 16, see FOR_EACH_COORD) and runs every table row: score of the diffused mixture (constants
// from score_constants, cast to T by the launcher), Philox4x32-10 + Box-Muller normals per the contract
// of refdiff/noise.py, then x <- a x + b s + b_prev s_prev + c z. The state and the score are in T;
// the normals are computed in double, as the contract requires, then cast.

typedef unsigned int u32;
typedef unsigned long long u64;

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define TWO_M32_D 2.3283064365386963e-10

__device__ __forceinline__ void philox4x32_10(u32 c[4], u32 k0, u32 k1) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {  // Weyl key schedule between rounds
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        u32 hi0 = __umulhi(PHILOX_M0, c[0]), lo0 = PHILOX_M0 * c[0];
        u32 hi1 = __umulhi(PHILOX_M1, c[2]), lo1 = PHILOX_M1 * c[2];
        u32 n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

// Box-Muller on one word pair, in double, in the contract's order of operations but for the angle:
// sincospi(2 u_t) gives cos and sin of 2 pi u_t in one call, with an exact range reduction and no slow
// path for large arguments (cos(2 pi u_t) of the rounded product differs from it by an ulp or so).
__device__ __forceinline__ void box_muller(u32 w_r, u32 w_t, double* z0, double* z1) {
    double u_r = ((double)w_r + 0.5) * TWO_M32_D;
    double u_t = ((double)w_t + 0.5) * TWO_M32_D;
    double r = sqrt(-2.0 * log(u_r));
    double sin_t, cos_t;
    sincospi(2.0 * u_t, &sin_t, &cos_t);
    *z0 = r * cos_t;
    *z1 = r * sin_t;
}

// The contract's normals z[0 .. D) of one particle at draw index k_draw: four per Philox call, counter
// (group, draw, particle low word, particle high word); a last group of one or two values uses one pair.
// Unrolled to the compile-time MAXD, so that z can live in registers.
template <int MAXD>
__device__ __forceinline__ void draw_normals(double* z, int D, u32 k_draw, u64 particle, u32 key0, u32 key1) {
    constexpr int kUnroll = MAXD <= 16 ? (MAXD + 3) / 4 : 1;  // as FOR_EACH_COORD below
#pragma unroll kUnroll
    for (int jb = 0; jb < (MAXD <= 16 ? (MAXD + 3) / 4 : (D + 3) / 4); ++jb) {
        if (4 * jb >= D) break;
        u32 ctr[4] = {(u32)jb, k_draw, (u32)(particle & 0xFFFFFFFFull), (u32)(particle >> 32)};
        philox4x32_10(ctr, key0, key1);
        box_muller(ctr[0], ctr[1], &z[4 * jb], &z[4 * jb + 1]);
        if (4 * jb + 2 < D) box_muller(ctr[2], ctr[3], &z[4 * jb + 2], &z[4 * jb + 3]);
    }
}

// exp of a logit less the running max (<= 0): in float32 by __expf, exp2 of v log2(e), whose error grows with
// |v| (2 + 1.2 |v| ulp) as rounding a float32 logit of that size already does; expf's range reduction costs
// some ten instructions more per component and step.
__device__ __forceinline__ float exp_t(float v) { return __expf(v); }
__device__ __forceinline__ double exp_t(double v) { return exp(v); }
template <typename T> __device__ __forceinline__ T lowest_finite();  // NVRTC has no FLT_MAX or DBL_MAX
template <> __device__ __forceinline__ float lowest_finite<float>() { return -3.40282347e38f; }
template <> __device__ __forceinline__ double lowest_finite<double>() { return -1.7976931348623157e308; }

// The score of a particle so far from every component that each quadratic form overflowed T: the loop in fused_run
// keeps no weight there (total = 0), where the reference (GaussianMixture._far_weights) and the Numba twin
// (mixture_numba._far_score) take the weights from the quadratic forms scaled by a power of two. The same arithmetic,
// in double: with 2^E above every |x_j| and |gamma mu_kj|, q~_k = 2^-2E q_k from the differences scaled by 2^-E
// (exactly), l_k = ln_k - 2^2E (q~_k - min_j q~_j) / 2, and the fields unscaled, dividing by the variances c (in
// double, as the FAR instances do). It reads the point from the particle's row of x and writes the score there (the
// caller holds the point in registers); not inlined, so that its frame stays off the common path. Passes over the
// components, no scratch of K entries.
template <typename T, int MAXD, bool FULL>
__device__ __noinline__ void far_score_row(T* row, const T* __restrict__ mu, const double* __restrict__ c,
                                           const T* __restrict__ ln, const T* __restrict__ U, int D, int K) {
    double big = 0;
    for (int j = 0; j < D; ++j) {
        big = fmax(big, fabs((double)row[j]));
        for (int k = 0; k < K; ++k) big = fmax(big, fabs((double)mu[(long long)k * D + j]));
    }
    int E;
    frexp(big, &E);  // 2^(E - 1) <= big < 2^E
    // y_ka = (U_k^T (x - gamma mu_k))_a, of the differences scaled by 2^-E or not
    auto y = [&](int k, int a, bool scaled) {
        auto z = [&](int j) {
            const double xj = (double)row[j], mj = (double)mu[(long long)k * D + j];
            return scaled ? ldexp(xj, -E) - ldexp(mj, -E) : xj - mj;
        };
        if (!FULL) return z(a);
        double ya = 0;
        for (int j = 0; j < D; ++j) ya += (double)U[((long long)k * D + j) * D + a] * z(j);
        return ya;
    };
    auto scaled_q = [&](int k) {
        double q = 0;
        for (int a = 0; a < D; ++a) {
            const double ya = y(k, a, true);
            q += ya * ya / c[(long long)k * D + a];
        }
        return q;
    };
    auto logit = [&](int k, double q_min) {  // l_k less the common 2^(2E) q~_min / 2
        const double dq = scaled_q(k) - q_min;
        return (double)ln[k] - (dq == 0 ? 0.0 : 0.5 * ldexp(dq, 2 * E));  // +inf past the range: weight 0
    };
    double q_min = scaled_q(0);
    for (int k = 1; k < K; ++k) q_min = fmin(q_min, scaled_q(k));
    double top = logit(0, q_min);
    for (int k = 1; k < K; ++k) top = fmax(top, logit(k, q_min));
    double out[MAXD], w_sum = 0;
    for (int j = 0; j < D; ++j) out[j] = 0;
    for (int k = 0; k < K; ++k) {
        const double w = exp(logit(k, q_min) - top);
        if (w == 0) continue;  // its field may have overflowed: 0 * inf
        w_sum += w;
        for (int a = 0; a < D; ++a) {
            const double qa = w * (y(k, a, false) / c[(long long)k * D + a]);
            if (FULL) {
                for (int j = 0; j < D; ++j) out[j] -= (double)U[((long long)k * D + j) * D + a] * qa;
            } else {
                out[a] -= qa;
            }
        }
    }
    for (int j = 0; j < D; ++j) row[j] = (T)(out[j] / w_sum);
}

// the coordinates j < D. Up to MAXD = 16 a loop to the compile-time MAXD, unrolled: the per-particle arrays
// below are indexed by constants and stay in registers (a loop to the run-time D would put them in local
// memory). Beyond, a loop to D: unrolling the full covariance's nested loops 64 x 64 took nvcc minutes.
// (kUnroll: a constant of the kernel's, the pragma's argument must be one)
#define FOR_EACH_COORD(j) \
    _Pragma("unroll kUnroll") for (int j = 0; j < (kUnroll > 1 ? MAXD : D); ++j) if (j < D)

// coefs (R, 4) = a, b, b_prev, c; draws (R,) int64 (-1: none); means, inv_c (R, K, D) and log_norm (R, K)
// in T; var (R, K, D) the variances c_k themselves, in double, read by the FAR instances only; U (K, D, D)
// eigenvectors in T, read when FULL. x (N, D) in T, in place; with draw_start != 0 x is only written: the
// start is prior_std * z at draw 0 (in double, then cast to T, as the reference draws it on the host).
// FAR: the careful instance, for what the common one gets wrong, run by the launcher only where needed.
// - A particle so far from every component that no weight is left (total = 0) takes far_score_row. Without it
//   such a particle's score is 0 * inf, NaN, and its state with it: the launcher runs the common instance first,
//   and only where the state comes out not finite runs the FAR one from the same start (the far path would cost
//   every thread registers: 48 -> 80 for float, D <= 2).
// - It divides by c_k, in double, where the common one multiplies by 1 / c_k in T: below T's smallest normal
//   number 1 / c_k overflows, and for float -ftz reads a subnormal c_k as 0, so a particle at that component's
//   mean would lose its weight. The launcher runs it alone where a row's variances are that small.
template <typename T, int MAXD, bool FULL, bool FAR>
__global__ void fused_run(T* x, const double* coefs, const long long* draws, long long first, u32 key0,
                          u32 key1, u64 offset, const T* __restrict__ means, const T* __restrict__ inv_c,
                          const double* __restrict__ var, const T* __restrict__ log_norm,
                          const T* __restrict__ U, long long N, int D, int K, int R, int draw_start,
                          double prior_std) {
    constexpr int kUnroll = MAXD <= 16 ? MAXD : 1;  // FOR_EACH_COORD
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= N) return;
    T xs[MAXD], s[MAXD], sp[MAXD], acc[MAXD], y[MAXD];
    double z[MAXD + 3];
    u64 particle = offset + (u64)p;
    if (draw_start) draw_normals<MAXD>(z, D, 0u, particle, key0, key1);
    FOR_EACH_COORD(j) {
        xs[j] = draw_start ? (T)(prior_std * z[j]) : x[p * D + j];
        s[j] = T(0);
        sp[j] = T(0);
    }
    for (int i = 0; i < R; ++i) {
        const double b_row = coefs[4 * i + 1], bp_row = coefs[4 * i + 2];
        const T a = (T)coefs[4 * i], b = (T)b_row, bp = (T)bp_row, c = (T)coefs[4 * i + 3];
        if (b_row != 0.0) {
            // exact mixture score: streaming log-sum-exp over the components
            const T* means_i = means + (long long)i * K * D;
            const T* inv_c_i = inv_c + (long long)i * K * D;
            const double* var_i = var + (long long)i * K * D;
            const T* log_norm_i = log_norm + (long long)i * K;
            // the running max starts at the lowest finite value: the first finite logit rescales the empty sums
            // by exp(lowest - logit) = 0
            T m = lowest_finite<T>(), total = T(0);
            FOR_EACH_COORD(j) acc[j] = T(0);
            for (int k = 0; k < K; ++k) {
                const T* mu = means_i + (long long)k * D;
                const T* ic = inv_c_i + (long long)k * D;
                const double* ck = var_i + (long long)k * D;
                T quad = T(0);
                FOR_EACH_COORD(a2) {
                    T ya;
                    if (FULL) {
                        ya = T(0);
                        FOR_EACH_COORD(j) ya += U[((long long)k * D + j) * D + a2] * (xs[j] - mu[j]);
                    } else {
                        ya = xs[a2] - mu[a2];
                    }
                    const T qa = FAR ? (T)((double)ya / ck[a2]) : ya * ic[a2];
                    quad += ya * qa;
                    y[a2] = qa;  // q_k = C_k^{-1} y_k in eigen coordinates
                }
                const T logit = log_norm_i[k] - T(0.5) * quad;
                // -inf (quad overflowed) or NaN (0 * inf, where 1 / c overflowed T): weight 0, the field may be infinite
                if (!(logit * T(0) == T(0))) continue;
                if (logit > m) {  // a new running max: what was summed so far is rescaled by exp(m_old - m_new)
                    const T scale = exp_t(m - logit);
                    total *= scale;
                    FOR_EACH_COORD(j) acc[j] = scale == T(0) ? T(0) : acc[j] * scale;  // 0 * inf is NaN
                    m = logit;
                }
                const T w = exp_t(logit - m);  // exp(0) = 1 for the new max
                total += w;
                if (w == T(0)) continue;  // a weight that is exactly 0 adds exactly 0 (its field may be infinite)
                FOR_EACH_COORD(j) {
                    T g;
                    if (FULL) {
                        g = T(0);
                        FOR_EACH_COORD(a2) g += U[((long long)k * D + j) * D + a2] * y[a2];
                    } else {
                        g = y[j];
                    }
                    acc[j] -= w * g;
                }
            }
            if (FAR && total == T(0)) {  // every quadratic form overflowed T (or x is NaN): through x's row
                FOR_EACH_COORD(j) x[p * D + j] = xs[j];
                far_score_row<T, MAXD, FULL>(x + p * D, means_i, var_i, log_norm_i, U, D, K);
                FOR_EACH_COORD(j) s[j] = x[p * D + j];
            } else {
                const T inv_total = T(1) / total;  // one division a row, not one a coordinate
                FOR_EACH_COORD(j) s[j] = acc[j] * inv_total;
            }
        }
        long long d = draws[i];
        if (d >= 0) draw_normals<MAXD>(z, D, (u32)(first + d), particle, key0, key1);
        FOR_EACH_COORD(j) {
            T v = a * xs[j] + b * s[j];
            if (bp_row != 0.0) v += bp * sp[j];
            if (d >= 0) v += c * (T)z[j];
            xs[j] = v;
        }
        if (b_row != 0.0)
            FOR_EACH_COORD(j) sp[j] = s[j];
    }
    FOR_EACH_COORD(j) x[p * D + j] = xs[j];
}
