// Mixture score and log-density, one thread per particle.
//
// Reference twin: refdiff.analytic.GaussianMixture._stream (score, log_prob);
// launcher: kernels/mixture_cupy.py. Self-contained (no #include), templated
// over the floating type T (float or double) and instantiated through CuPy's
// name_expressions: mixture_score<float>, mixture_score<double>.
//
// With C_k = gamma^2 Sigma_k + sigma^2 I = U_k diag(c_k) U_k^T, c_k = gamma^2 lam_k + sigma^2,
// z_k = x - gamma mu_k and y_k = U_k^T z_k (y_k = z_k for isotropic/diagonal):
//   l_k = log w_k - (D log 2 pi + sum_i log c_ki) / 2 - sum_i y_ki^2 / c_ki / 2
//   log p = LSE_k l_k,   score = -sum_k softmax(l)_k U_k (y_k / c_k)
// accumulated in one pass with an online log-sum-exp: when a new running max
// appears, what was summed so far is rescaled by exp(m_old - m_new). The
// score row of the output is the accumulator.
//
// Arguments (row-major, C-contiguous, all of type T unless stated):
//   x (N, D); gamma, var (n_t,) with n_t == 1 (one t) or N (one t per row);
//   log_w (K,) of the active components; mu (K, D); lam (K, D) eigenvalues of
//   Sigma_k (isotropic: repeated); U (K, D, D) eigenvectors as columns (read
//   only when kind == 2); kind 0 isotropic, 1 diagonal, 2 full (long long);
//   want_score (long long): 0 writes logp only; score (N, D) and logp (N,) out.

template <typename T> __device__ __forceinline__ T rd_exp(T v);
template <> __device__ __forceinline__ float rd_exp<float>(float v) { return expf(v); }
template <> __device__ __forceinline__ double rd_exp<double>(double v) { return exp(v); }
template <typename T> __device__ __forceinline__ T rd_log(T v);
template <> __device__ __forceinline__ float rd_log<float>(float v) { return logf(v); }
template <> __device__ __forceinline__ double rd_log<double>(double v) { return log(v); }

template <typename T>
__global__ void mixture_score(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ var,
                              long long n_t, const T* __restrict__ log_w, const T* __restrict__ mu,
                              const T* __restrict__ lam, const T* __restrict__ U, long long kind,
                              long long N, long long K, long long D, long long want_score,
                              T* __restrict__ score, T* __restrict__ logp)
{
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const T LOG_2PI = (T)1.8378770664093454835606594728112;
    const T* xn = x + n * D;
    T* sn = score + n * D;
    const T g = gamma[n_t == 1 ? 0 : n];
    const T v = var[n_t == 1 ? 0 : n];
    const T g2 = g * g;
    if (want_score) {
        for (long long d = 0; d < D; ++d) sn[d] = (T)0;
    }
    T m = (T)0, total = (T)0;
    for (long long k = 0; k < K; ++k) {
        const T* muk = mu + k * D;
        const T* lamk = lam + k * D;
        const T* Uk = U + k * D * D;
        // pass A: the logit l_k
        T quad = (T)0, logdet = (T)0;
        if (kind == 2) {
            for (long long e = 0; e < D; ++e) {
                T ye = (T)0;
                for (long long d = 0; d < D; ++d) ye += Uk[d * D + e] * (xn[d] - g * muk[d]);
                const T c = g2 * lamk[e] + v;
                quad += ye * ye / c;
                logdet += rd_log<T>(c);
            }
        } else {
            for (long long d = 0; d < D; ++d) {
                const T zd = xn[d] - g * muk[d];
                const T c = g2 * lamk[kind == 0 ? 0 : d] + v;
                quad += zd * zd / c;
                if (kind == 1) logdet += rd_log<T>(c);
            }
            if (kind == 0) logdet = (T)D * rd_log<T>(g2 * lamk[0] + v);
        }
        const T logit = log_w[k] - (T)0.5 * ((T)D * LOG_2PI + logdet) - (T)0.5 * quad;
        // online log-sum-exp: a rescales the sum so far, b weighs component k
        T a, b;
        if (k == 0) {
            m = logit; a = (T)0; b = (T)1;
        } else if (logit > m) {
            a = rd_exp<T>(m - logit); b = (T)1; m = logit;
        } else {
            a = (T)1; b = rd_exp<T>(logit - m);
        }
        total = total * a + b;
        if (!want_score) continue;
        // pass B: score accumulator <- a * accumulator - b * C_k^{-1} z_k
        if (kind == 2) {
            if (a != (T)1) {
                for (long long d = 0; d < D; ++d) sn[d] *= a;
            }
            for (long long e = 0; e < D; ++e) {
                T ye = (T)0;
                for (long long d = 0; d < D; ++d) ye += Uk[d * D + e] * (xn[d] - g * muk[d]);
                const T qe = b * ye / (g2 * lamk[e] + v);
                for (long long d = 0; d < D; ++d) sn[d] -= Uk[d * D + e] * qe;
            }
        } else {
            for (long long d = 0; d < D; ++d) {
                const T zd = xn[d] - g * muk[d];
                const T c = g2 * lamk[kind == 0 ? 0 : d] + v;
                sn[d] = sn[d] * a - b * zd / c;
            }
        }
    }
    logp[n] = m + rd_log<T>(total);
    if (want_score) {
        for (long long d = 0; d < D; ++d) sn[d] /= total;
    }
}
