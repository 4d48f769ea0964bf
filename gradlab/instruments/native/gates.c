/* The elementwise part of one LSTM or GRU time step, forward and backward, for the closed-form
 * layer (gradlab/instruments/closed_layer.py, adjoint.py): torch's own ops cost ~10 calls a
 * step here, each a pass over (B, G*H), this one pass. float32, contiguous rows, torch's gate
 * order. Built at first use by gradlab/instruments/native.py; without a C compiler the torch
 * ops stay.
 *
 * exp is Cephes' expf (polynomial after a Cody-Waite reduction, ~1 ulp), written so that the
 * compiler vectorises the loops (no libm call); NaN passes through it (every step keeps the
 * argument's NaN), +-inf saturates (sigmoid(-inf) is 0, as torch's). tanh z = 2 sigmoid(2z)
 * - 1 as in the torch route. */

#include <stdint.h>
#include <string.h>

static inline float exp_f(float x) {
    /* past 88.7 the scale's exponent is 255: +inf, so 1 / (1 + e^-x) is exactly 0 */
    x = x > 89.0f ? 89.0f : x;
    x = x < -87.0f ? -87.0f : x; /* e^-87 is still a normal float */
    const float big = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float k = (x * 1.44269504088896341f + big) - big;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

static inline float tanh_f(float x) { return 2.0f * sigmoid_f(2.0f * x) - 1.0f; }

/* gates (B, 4, H): pre-activations in, post-activations out. c_prev (B, H) or NULL (zero). */
void lstm_forward_step(float *restrict gates, const float *restrict c_prev, float *restrict c,
                       float *restrict tc, float *restrict h, int64_t batch, int64_t n) {
    for (int64_t b = 0; b < batch; b++) {
        float *gi = gates + b * 4 * n, *gf = gi + n, *gg = gf + n, *go = gg + n;
        const float *cp = c_prev ? c_prev + b * n : 0;
        float *cb = c + b * n, *tb = tc + b * n, *hb = h + b * n;
        for (int64_t j = 0; j < n; j++) {
            float i = sigmoid_f(gi[j]), f = sigmoid_f(gf[j]), g = tanh_f(gg[j]);
            float o = sigmoid_f(go[j]);
            float cv = cp ? f * cp[j] + i * g : i * g;
            float t = tanh_f(cv);
            gi[j] = i, gf[j] = f, gg[j] = g, go[j] = o;
            cb[j] = cv, tb[j] = t, hb[j] = o * t;
        }
    }
}

/* One step back: a (B, H) the total dL/dh_t; carry (B, H) dL/dc_{t+1} f_{t+1} in, dL/dc_t f_t
 * out; ac (B, H) the total dL/dc_t out; dz (B, 4, H) the pre-activation gradients out.
 * c_prev (B, H) or NULL (zero). */
void lstm_backward_step(const float *restrict gates, const float *restrict c_prev,
                        const float *restrict tc, const float *restrict a,
                        float *restrict carry, float *restrict ac, float *restrict dz,
                        int64_t batch, int64_t n) {
    for (int64_t b = 0; b < batch; b++) {
        const float *gi = gates + b * 4 * n, *gf = gi + n, *gg = gf + n, *go = gg + n;
        const float *cp = c_prev ? c_prev + b * n : 0;
        const float *tb = tc + b * n, *ab = a + b * n;
        float *kb = carry + b * n, *acb = ac + b * n;
        float *di = dz + b * 4 * n, *df = di + n, *dg = df + n, *dop = dg + n;
        for (int64_t j = 0; j < n; j++) {
            float i = gi[j], f = gf[j], g = gg[j], o = go[j], t = tb[j], av = ab[j];
            float cv = kb[j] + av * (o - o * t * t);
            float prev = cp ? cp[j] : 0.0f;
            acb[j] = cv;
            di[j] = cv * g * (i - i * i);
            df[j] = cv * prev * (f - f * f);
            dg[j] = cv * i * (1.0f - g * g);
            dop[j] = av * t * (o - o * o);
            kb[j] = cv * f;
        }
    }
}

/* GRU, gate order r, z, n as torch's. gates (B, 3, H): the input side's pre-activations
 * W_i x_t + b_i in, post-activations out; hh (B, 3, H) W_h h_{t-1} + b_h, its rows hh_row
 * floats apart (0: one row for all, the bias alone at t = 0); h_prev (B, H) or NULL (zero);
 * hh_n (B, H) out: W_hn h_{t-1} + b_hn, which the backward needs; h (B, H) out. */
void gru_forward_step(float *restrict gates, const float *restrict hh, int64_t hh_row,
                      const float *restrict h_prev, float *restrict hh_n, float *restrict h,
                      int64_t batch, int64_t n) {
    for (int64_t b = 0; b < batch; b++) {
        float *gr = gates + b * 3 * n, *gz = gr + n, *gn = gz + n;
        const float *hr = hh + b * hh_row, *hz = hr + n, *hn = hz + n;
        const float *hp = h_prev ? h_prev + b * n : 0;
        float *hnb = hh_n + b * n, *hb = h + b * n;
        for (int64_t j = 0; j < n; j++) {
            float r = sigmoid_f(gr[j] + hr[j]), z = sigmoid_f(gz[j] + hz[j]);
            float u = tanh_f(gn[j] + r * hn[j]);
            float prev = hp ? hp[j] : 0.0f;
            gr[j] = r, gz[j] = z, gn[j] = u;
            hnb[j] = hn[j];
            hb[j] = u + z * (prev - u);
        }
    }
}

/* One step back: a (B, H) the total dL/dh_t; a_prev (B, H) or NULL: += the z h_{t-1} path
 * (the recurrent product's share is the caller's GEMM); dz_hh (B, 3, H) out: the gradients of
 * W_h h_{t-1} + b_h (n's is its pre-activation's times r); dz_ih (B, 3, H) or NULL out: of
 * W_i x_t + b_i (r's and z's the same, n's not times r). */
void gru_backward_step(const float *restrict gates, const float *restrict hh_n,
                       const float *restrict h_prev, const float *restrict a,
                       float *restrict a_prev, float *restrict dz_hh, float *restrict dz_ih,
                       int64_t batch, int64_t n) {
    for (int64_t b = 0; b < batch; b++) {
        const float *gr = gates + b * 3 * n, *gz = gr + n, *gn = gz + n;
        const float *hnb = hh_n + b * n, *ab = a + b * n;
        const float *hp = h_prev ? h_prev + b * n : 0;
        float *apb = a_prev ? a_prev + b * n : 0;
        float *hr = dz_hh + b * 3 * n, *hz = hr + n, *hn = hz + n;
        float *ir = dz_ih ? dz_ih + b * 3 * n : 0, *iz = ir ? ir + n : 0, *in = iz ? iz + n : 0;
        for (int64_t j = 0; j < n; j++) {
            float r = gr[j], z = gz[j], u = gn[j], av = ab[j];
            float prev = hp ? hp[j] : 0.0f;
            float dn = av * (1.0f - z) * (1.0f - u * u);
            float dr = dn * hnb[j] * (r - r * r), dz = av * (prev - u) * (z - z * z);
            hr[j] = dr, hz[j] = dz, hn[j] = dn * r;
            if (ir) ir[j] = dr, iz[j] = dz, in[j] = dn;
            if (apb) apb[j] += av * z;
        }
    }
}

/* Saturation counts of post-activation gates v (rows, G, H): counts[k] += the entries of gate k
 * with |v - 0.5| > sig_bound (the sigmoid gates) or, for gate tanh_gate, |v| > tanh_bound. The
 * same float32 subtraction and comparison as torch's route, so the same counts; NaN counts
 * nowhere. */
void gate_saturation_counts(const float *restrict v, int64_t rows, int64_t g, int64_t n,
                            int64_t tanh_gate, float sig_bound, float tanh_bound,
                            int64_t *restrict counts) {
    for (int64_t row = 0; row < rows; row++) {
        for (int64_t k = 0; k < g; k++) {
            const float *x = v + (row * g + k) * n;
            float centre = k == tanh_gate ? 0.0f : 0.5f;
            float bound = k == tanh_gate ? tanh_bound : sig_bound;
            int32_t hits = 0;
            for (int64_t j = 0; j < n; j++) {
                float d = x[j] - centre;
                hits += (d > bound) | (d < -bound);
            }
            counts[k] += hits;
        }
    }
}
