// Mixture score and log-density, one thread per particle.
//
// Reference twin: refdiff.analytic.GaussianMixture._stream (score, log_prob);
// launcher: kernels/mixture_cupy.py. Self-contained (no #include), templated
// over the floating type T (float or double) and a register bound MAXD, and
// instantiated through CuPy's name_expressions: mixture_score<float, 4>, ...,
// mixture_score<double, 64>, and mixture_score<T, 0> for D beyond every bound; mixture_score_diag<T, MAXD, ISO>
// (MAXD 2 ... 64) for one t with isotropic (ISO) or diagonal covariances (see there).
//
// With C_k = gamma^2 Sigma_k + sigma^2 I = U_k diag(c_k) U_k^T, c_k = gamma^2 lam_k + sigma^2,
// z_k = x - gamma mu_k and y_k = U_k^T z_k (y_k = z_k for isotropic/diagonal):
//   l_k = log w_k - (D log 2 pi + sum_i log c_ki) / 2 - sum_i y_ki^2 / c_ki / 2
//   log p = LSE_k l_k,   score = -sum_k softmax(l)_k U_k (y_k / c_k)
// accumulated in one pass with an online log-sum-exp: when a new running max
// appears, what was summed so far is rescaled by exp(m_old - m_new).
//
// For D <= MAXD the point and the score's running sum stay in registers: every
// loop over the coordinates runs to the compile-time MAXD, unrolled, with the
// coordinates past D skipped (a loop to the run-time D would index the arrays
// dynamically and put them in local memory). With MAXD == 0 the point is read
// from x and the sum kept in the score's row, for any D.
//
// For one t (n_t == 1) the component constants gamma mu_k (gmu), 1 / c_k (ic)
// and ln_k = log w_k - (D log 2 pi + sum_i log c_ki) / 2 (ln) come from the
// launcher, formed in float64; otherwise each thread forms them from gamma,
// var, mu and lam (a log per component and coordinate) and divides by c_k
// where the one-t case multiplies by 1 / c_k: with one t per row (n_t == N),
// or with the one t at gamma[0] and var[0] (n_t == 0), which the launcher
// takes where 1 / c_k would overflow T (the reference divides by c_k, and a
// point near such a narrow component's mean carries its weight).
//
// Arguments (row-major, C-contiguous, all of type T unless stated):
//   x (N, D); gamma, var (max(n_t, 1),) with n_t == 1 or 0 (one t) or N (one t per row);
//   log_w (K,) of the active components; mu (K, D); lam (K, D) eigenvalues of
//   Sigma_k (isotropic: repeated); U (K, D, D) eigenvectors as columns (read
//   only when kind == 2); gmu, ic (K, D) and ln (K,) (read only when n_t == 1);
//   kind 0 isotropic, 1 diagonal, 2 full (long long); want_score (long long):
//   0 writes logp only; score (N, D) and logp (N,) out.

template <typename T> __device__ __forceinline__ T rd_exp(T v);
template <> __device__ __forceinline__ float rd_exp<float>(float v) { return expf(v); }
template <> __device__ __forceinline__ double rd_exp<double>(double v) { return exp(v); }
template <typename T> __device__ __forceinline__ T rd_log(T v);
template <> __device__ __forceinline__ float rd_log<float>(float v) { return logf(v); }
template <> __device__ __forceinline__ double rd_log<double>(double v) { return log(v); }

// the coordinates d < D, as an unrolled loop to MAXD when MAXD > 0
#define FOR_EACH_COORD(d) \
    _Pragma("unroll") for (long long d = 0; d < (MAXD > 0 ? (long long)MAXD : D); ++d) if (MAXD == 0 || d < D)

// The score of one point whose every quadratic form overflowed T (no weight left in the kernel below): twin
// of GaussianMixture._far_weights. With 2^E above every |x_d| and |gamma mu_kd|, q~_k = 2^-2E q_k comes from the
// scaled differences in double, and l_k - l_j = ln_k - ln_j - 2^(2E) (q~_k - q~_j) / 2 gives the weights; the
// fields are unscaled, in double. Three passes over the components (no scratch of K entries). Called by a kernel of
// its own (mixture_score_far), not from mixture_score: there it took registers (40 -> 94 for float, D <= 4) from
// every thread for a rare path.
template <typename T>
__device__ void far_score(const T* __restrict__ x, T g, T v, const T* __restrict__ log_w,
                                       const T* __restrict__ mu, const T* __restrict__ lam, const T* __restrict__ U,
                                       const T* __restrict__ gmu, const T* __restrict__ ic, const T* __restrict__ ln,
                                       bool one_t, long long kind, long long K, long long D, T* __restrict__ out)
{
    const double LOG_2PI = 1.8378770664093454835606594728112;
    auto shift = [&](long long k, long long d) { return (double)(one_t ? gmu[k * D + d] : g * mu[k * D + d]); };
    // val / c_ke: by 1 / c_ke from the launcher, or divided by c_ke formed here (mixture_score's over_c)
    auto over_c = [&](long long k, long long e, double val) {
        return one_t ? val * (double)ic[k * D + e] : val / (double)(g * g * lam[k * D + (kind == 0 ? 0 : e)] + v);
    };
    auto ln_k = [&](long long k) {
        if (one_t) return (double)ln[k];
        double logdet = 0;
        for (long long e = 0; e < D; ++e) logdet += log((double)(g * g * lam[k * D + (kind == 0 ? 0 : e)] + v));
        return (double)log_w[k] - 0.5 * ((double)D * LOG_2PI + logdet);
    };
    double big = 0;
    for (long long d = 0; d < D; ++d) {
        big = fmax(big, fabs((double)x[d]));
        for (long long k = 0; k < K; ++k) big = fmax(big, fabs(shift(k, d)));
    }
    int E;
    frexp(big, &E);  // 2^(E - 1) <= big < 2^E
    // y_ke = (U_k^T (x - gamma mu_k))_e, of the differences scaled by 2^-E or not
    auto y = [&](long long k, long long e, bool scaled) {
        auto z = [&](long long d) { return scaled ? ldexp((double)x[d], -E) - ldexp(shift(k, d), -E) : (double)x[d] - shift(k, d); };
        if (kind != 2) return z(e);
        double ye = 0;
        for (long long d = 0; d < D; ++d) ye += (double)U[k * D * D + d * D + e] * z(d);
        return ye;
    };
    auto scaled_q = [&](long long k) {
        double q = 0;
        for (long long e = 0; e < D; ++e) {
            const double ye = y(k, e, true);
            q += over_c(k, e, ye * ye);
        }
        return q;
    };
    auto logit = [&](long long k, double q_min) {  // l_k less the common 2^(2E) q~_min / 2
        const double dq = scaled_q(k) - q_min;
        // ldexp overflows to +inf where 2^(2E) dq does, and the weight is then exactly 0
        return ln_k(k) - (dq == 0 ? 0.0 : 0.5 * ldexp(dq, 2 * E));
    };
    double q_min = scaled_q(0), w_sum = 0;  // K >= 1; NVRTC has no INFINITY to start from
    for (long long k = 1; k < K; ++k) q_min = fmin(q_min, scaled_q(k));
    double top = logit(0, q_min);
    for (long long k = 1; k < K; ++k) top = fmax(top, logit(k, q_min));
    for (long long d = 0; d < D; ++d) out[d] = (T)0;
    for (long long k = 0; k < K; ++k) {
        const double w = exp(logit(k, q_min) - top);
        if (w == 0) continue;  // its field may have overflowed: 0 * inf
        w_sum += w;
        for (long long e = 0; e < D; ++e) {
            const double qe = over_c(k, e, w * y(k, e, false));
            if (kind == 2) {
                for (long long d = 0; d < D; ++d) out[d] -= (T)((double)U[k * D * D + d * D + e] * qe);
            } else {
                out[e] -= (T)qe;
            }
        }
    }
    for (long long d = 0; d < D; ++d) out[d] /= (T)w_sum;
}

// The parameters of mixture_score and of mixture_score_far, which the launcher calls with the same arguments.
#define MIXTURE_SCORE_PARAMS                                                                                        \
    const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ var, long long n_t,                 \
        const T* __restrict__ log_w, const T* __restrict__ mu, const T* __restrict__ lam, const T* __restrict__ U,  \
        const T* __restrict__ gmu, const T* __restrict__ ic, const T* __restrict__ ln, long long kind, long long N, \
        long long K, long long D, long long want_score, T* __restrict__ score, T* __restrict__ logp

template <typename T, int MAXD>
__global__ void mixture_score(MIXTURE_SCORE_PARAMS)
{
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const T LOG_2PI = (T)1.8378770664093454835606594728112;
    const bool one_t = n_t == 1;  // the launcher's constants; else formed here, dividing by c_k
    const T g = gamma[n_t > 1 ? n : 0];
    const T v = var[n_t > 1 ? n : 0];
    const T g2 = g * g;
    T x_r[MAXD > 0 ? MAXD : 1], acc_r[MAXD > 0 ? MAXD : 1];
    if (MAXD > 0) {
        FOR_EACH_COORD(d) x_r[d] = x[n * D + d];
    }
    const T* xs = MAXD > 0 ? x_r : x + n * D;
    T* acc = MAXD > 0 ? acc_r : score + n * D;  // written only when want_score (score is (1, D) otherwise)
    if (want_score) {
        FOR_EACH_COORD(d) acc[d] = (T)0;
    }
    T m = (T)0, total = (T)0;
    bool seen = false;  // a component with a finite logit
    for (long long k = 0; k < K; ++k) {
        const T* muk = mu + k * D;
        const T* lamk = lam + k * D;
        const T* Uk = U + k * D * D;
        auto shift = [&](long long d) { return one_t ? gmu[k * D + d] : g * muk[d]; };  // gamma mu_k
        // val / c_ke, as val * (1 / c_ke) with the launcher's constants, else by a division (one either way)
        auto over_c = [&](long long e, T val) { return one_t ? val * ic[k * D + e] : val / (g2 * lamk[kind == 0 ? 0 : e] + v); };
        // the logit l_k
        T quad = (T)0;
        if (kind == 2) {
            for (long long e = 0; e < D; ++e) {
                T ye = (T)0;
                FOR_EACH_COORD(d) ye += Uk[d * D + e] * (xs[d] - shift(d));
                quad += ye * over_c(e, ye);  // the reference's order: ye * ye alone overflows first
            }
        } else {
            FOR_EACH_COORD(d) {
                const T zd = xs[d] - shift(d);
                quad += zd * over_c(d, zd);
            }
        }
        T lnk;
        if (one_t) {
            lnk = ln[k];
        } else {
            T logdet = (T)0;
            if (kind == 0) {
                logdet = (T)D * rd_log<T>(g2 * lamk[0] + v);
            } else {
                for (long long e = 0; e < D; ++e) logdet += rd_log<T>(g2 * lamk[e] + v);
            }
            lnk = log_w[k] - (T)0.5 * ((T)D * LOG_2PI + logdet);
        }
        const T logit = lnk - (T)0.5 * quad;
        if (!(logit * (T)0 == (T)0)) continue;  // -inf (quad overflowed): weight 0, and the field may be infinite
        // online log-sum-exp: a rescales the sum so far, b weighs component k
        T a, b;
        if (!seen) {
            m = logit; a = (T)0; b = (T)1; seen = true;
        } else if (logit > m) {
            a = rd_exp<T>(m - logit); b = (T)1; m = logit;
        } else {
            a = (T)1; b = rd_exp<T>(logit - m);
        }
        total = total * a + b;
        if (!want_score) continue;
        // the score's sum <- a * sum - b * C_k^{-1} z_k, where a weight that is exactly 0 (a for the sum so far,
        // b for component k) adds exactly 0: the field it would multiply may have overflowed (0 * inf is NaN)
        if (kind == 2) {
            FOR_EACH_COORD(d) acc[d] = a == (T)0 ? (T)0 : acc[d] * a;
            if (b != (T)0) for (long long e = 0; e < D; ++e) {
                T ye = (T)0;
                FOR_EACH_COORD(d) ye += Uk[d * D + e] * (xs[d] - shift(d));
                const T qe = b * over_c(e, ye);
                FOR_EACH_COORD(d) acc[d] -= Uk[d * D + e] * qe;
            }
        } else {
            FOR_EACH_COORD(d) {
                const T kept = a == (T)0 ? (T)0 : acc[d] * a;
                acc[d] = b == (T)0 ? kept : kept - b * over_c(d, xs[d] - shift(d));
            }
        }
    }
    logp[n] = m + rd_log<T>(total);  // -inf where no logit was finite (total = 0: mixture_score_far's rows)
    if (want_score) {
        FOR_EACH_COORD(d) score[n * D + d] = acc[d] / total;
    }
}

// The common case on its own: one t, isotropic or diagonal covariances, D <= MAXD. The launcher gives the
// component constants of mixture_score's one-t case as rows of MAXD entries, zero past D: gmu (K, MAXD),
// ic (K, MAXD) holding 1 / c_kd for every coordinate of either kind, and ln (K,). The padding adds exact
// zeros (z = 0 - 0, times 1 / c: 0 there, or the isotropic component's 1 / c_k, which makes a NaN only
// where 1 / c_k overflowed and the component's logit is dropped anyway), so every loop runs to the
// compile-time MAXD without a test of D, and component k's row sits at k * MAXD. Compared with mixture_score: no run-time branch on the kind or on n_t,
// 32-bit component indices, the online log-sum-exp's rescale taken only when a new running max appears (a
// branch some threads of a warp take, rarely after the first components) where mixture_score scales the
// sum at every component, and exp in float32 by the hardware's exp2 (fast_exp). Writes log p always: the
// rows it leaves with log p = -inf get their score from mixture_score_far, as mixture_score's do.
template <typename T> __device__ __forceinline__ T fast_exp(T v);
// __expf: exp2 of v log2(e); its error grows with |v| (2 + 1.2 |v| ulp), as rounding a float32 logit of
// size |v| already does, where expf's range reduction costs some ten instructions more per component.
template <> __device__ __forceinline__ float fast_exp<float>(float v) { return __expf(v); }
template <> __device__ __forceinline__ double fast_exp<double>(double v) { return exp(v); }
template <typename T> __device__ __forceinline__ T lowest_finite();  // NVRTC has no FLT_MAX or DBL_MAX
template <> __device__ __forceinline__ float lowest_finite<float>() { return -3.40282347e38f; }
template <> __device__ __forceinline__ double lowest_finite<double>() { return -1.7976931348623157e308; }

// V values of a component's row from p, which sits at a multiple of V values' size (rows of MAXD values in
// arrays that start 256-byte aligned): one 16- or 8-byte load where V scalar loads take V instructions.
template <int V> struct vec_width {};
__device__ __forceinline__ void load_vec(const float* __restrict__ p, float* out, vec_width<4>) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    out[0] = q.x; out[1] = q.y; out[2] = q.z; out[3] = q.w;
}
__device__ __forceinline__ void load_vec(const float* __restrict__ p, float* out, vec_width<2>) {
    const float2 q = *reinterpret_cast<const float2*>(p);
    out[0] = q.x; out[1] = q.y;
}
__device__ __forceinline__ void load_vec(const double* __restrict__ p, double* out, vec_width<2>) {
    const double2 q = *reinterpret_cast<const double2*>(p);
    out[0] = q.x; out[1] = q.y;
}

// bad (one int, zero before the launch) becomes 1 when any coordinate of x is NaN or infinite: the launcher
// checks x by it, with no pass of its own over x. Every thread that sees one stores the same 1.
template <typename T, int MAXD, bool ISO>
__global__ void mixture_score_diag(const T* __restrict__ x, const T* __restrict__ gmu, const T* __restrict__ ic,
                                   const T* __restrict__ ln, long long N, int K, int D, int want_score,
                                   T* __restrict__ score, T* __restrict__ logp, int* __restrict__ bad)
{
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    // the rows are read V values at a time: 4 floats (2 at MAXD = 2) or 2 doubles, V dividing MAXD
    constexpr int V = sizeof(T) == 4 && MAXD % 4 == 0 ? 4 : 2;
    // Up to MAXD = 16 the field terms t_d = z_d / c_kd stay in registers for the score's sum; beyond, that sum
    // forms them again from the rows (L1 hits), which keeps the point and the sum, 2 MAXD values, in
    // registers. ISO: one 1 / c_k a component (ic's first column).
    constexpr bool kKeepT = MAXD <= 16;
    T xs[MAXD], t[kKeepT ? MAXD : 1], acc[MAXD];
    bool finite = true;
#pragma unroll
    for (int d = 0; d < MAXD; ++d) {
        xs[d] = d < D ? x[n * D + d] : (T)0;
        finite = finite && xs[d] * (T)0 == (T)0;
        acc[d] = (T)0;
    }
    if (!finite) *bad = 1;
    // The running max starts at the lowest finite value, so that no test of a first component is needed: the
    // first finite logit rescales the empty sums by exp(lowest - logit) = 0.
    T m = lowest_finite<T>(), total = (T)0;
    for (int k = 0; k < K; ++k) {
        const T* gmuk = gmu + k * MAXD;
        const T* ick = ic + k * MAXD;
        const T ic0 = ick[0];
        // t_d = z_d / c_kd for d in [d0, d0 + V), with z_d = x_d - gamma mu_kd
        auto fields = [&](int d0, T* z, T* tv) {
            T g[V], c[V];
            load_vec(gmuk + d0, g, vec_width<V>{});
            if (!ISO) load_vec(ick + d0, c, vec_width<V>{});
#pragma unroll
            for (int j = 0; j < V; ++j) {
                z[j] = xs[d0 + j] - g[j];
                tv[j] = z[j] * (ISO ? ic0 : c[j]);
            }
        };
        T quad = (T)0;
#pragma unroll
        for (int d0 = 0; d0 < MAXD; d0 += V) {
            T z[V], tv[V];
            fields(d0, z, tv);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                if constexpr (kKeepT) t[d0 + j] = tv[j];
                quad += z[j] * tv[j];  // z (z / c), mixture_score's order: z * z alone overflows first
            }
        }
        const T logit = ln[k] - (T)0.5 * quad;
        // -inf (quad overflowed) or NaN (0 * inf, where 1 / c_kd overflowed T): weight 0, as in mixture_score
        if (!(logit * (T)0 == (T)0)) continue;
        if (logit > m) {  // a new running max: what was summed so far is rescaled by exp(m_old - m_new)
            const T a = fast_exp<T>(m - logit);
            total *= a;
#pragma unroll
            for (int d = 0; d < MAXD; ++d) acc[d] = a == (T)0 ? (T)0 : acc[d] * a;  // 0 * inf is NaN
            m = logit;
        }
        const T b = fast_exp<T>(logit - m);  // exp(0) = 1 for the new max
        total += b;
        if (want_score && b != (T)0) {  // a weight that is exactly 0 adds exactly 0 (its field may be infinite)
#pragma unroll
            for (int d0 = 0; d0 < MAXD; d0 += V) {
                T z[V], tv[V];
                if constexpr (kKeepT) {
#pragma unroll
                    for (int j = 0; j < V; ++j) tv[j] = t[d0 + j];
                } else {
                    fields(d0, z, tv);
                }
#pragma unroll
                for (int j = 0; j < V; ++j) acc[d0 + j] -= b * tv[j];
            }
        }
    }
    logp[n] = m + rd_log<T>(total);  // -inf where no logit was finite (total = 0: mixture_score_far's rows)
    if (want_score) {
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
            if (d < D) score[n * D + d] = acc[d] / total;
        }
    }
}

// After mixture_score with want_score, same arguments: the rows it left with log p = -inf (no logit finite, so
// its score is 0 / 0) get their score from far_score; every other thread returns at once.
template <typename T>
__global__ void mixture_score_far(MIXTURE_SCORE_PARAMS)
{
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N || !want_score || !(isinf(logp[n]) && logp[n] < 0)) return;
    far_score<T>(x + n * D, gamma[n_t > 1 ? n : 0], var[n_t > 1 ? n : 0], log_w, mu, lam, U, gmu, ic, ln, n_t == 1,
                 kind, K, D, score + n * D);
}
