/* seq2seq's kernels for bf16 training on the CPU (seq2seq.bf16): the element-wise work
 * between PyTorch's bf16 products (oneDNN's GEMMs), one pass each.
 *
 * - lstm_forward_step / lstm_backward_step: the gate arithmetic of one LSTM time step over
 *   a (batch, 4 x hidden) row of gates; a row holds nn.LSTM's blocks i, f, g, o of
 *   `hidden` values each.
 * - softmax_grad_rows: the output layer's softmax and its gradient, a row of logits at a
 *   time, in place.
 *
 * Every (rows, width) matrix is dense, rows `width` apart, unless a `_ld` argument says
 * otherwise. bf16 values are raw uint16 (the top half of a float32). Gate values, cells,
 * probabilities and every sum are float32; bf16 only where a product reads or writes.
 *
 * Built at run time by the system C compiler for x86-64 with AVX-512 (seq2seq.bf16);
 * the loops are written so that it vectorizes them (-O3, no -ffast-math): hence the
 * exponential below instead of libm's, one function per row with restrict pointers, and
 * the reductions' forms (see softmax_grad_rows).
 */
#include <stdint.h>

typedef uint16_t bf16;

static inline float from_bf16(bf16 x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as PyTorch's conversion does for finite values. */
static inline bf16 to_bf16(float x) {
    uint32_t u;
    __builtin_memcpy(&u, &x, 4);
    return (bf16)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* exp(x) to ~2 ulp: 2^k x p(r), x = k ln 2 + r, |r| <= ln 2 / 2 (Cephes' expf
 * polynomial); x clamped to [-87, 88], where float32's exp stays finite and normal. */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    uint32_t bits = (uint32_t)((int32_t)k + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, 4);
    return (p * r * r + r + 1.0f) * scale;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
static inline float tanh_(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }

/* The activations i, f, g, o of one cell from its pre-activations (bf16, bias not added)
 * and the bias: forward's, recomputed by backward from the same inputs. */
static inline void activations(bf16 pi, bf16 pf, bf16 pg, bf16 po, float bi, float bf,
                               float bg, float bo, float *i, float *f, float *g, float *o) {
    *i = sigmoid(from_bf16(pi) + bi);
    *f = sigmoid(from_bf16(pf) + bf);
    *g = tanh_(from_bf16(pg) + bg);
    *o = sigmoid(from_bf16(po) + bo);
}

static void forward_row(int hidden, const bf16 *restrict pi, const bf16 *restrict pf,
                        const bf16 *restrict pg, const bf16 *restrict po,
                        const float *restrict bi, const float *restrict bf,
                        const float *restrict bg, const float *restrict bo,
                        const float *restrict c_prev, float *restrict c_next,
                        bf16 *restrict h) {
    for (int j = 0; j < hidden; j++) {
        float i, f, g, o;
        activations(pi[j], pf[j], pg[j], po[j], bi[j], bf[j], bg[j], bo[j], &i, &f, &g, &o);
        float c = f * c_prev[j] + i * g;
        c_next[j] = c;
        h[j] = to_bf16(o * tanh_(c));
    }
}

/* One step forward. pre: the gates' pre-activations x_t W_ih^T + h_{t-1} W_hh^T, (rows, 4h)
 * bf16 (kept: backward recomputes the activations from them); bias: b_ih + b_hh, (4h)
 * float32; c_prev: (rows, h) float32. Writes c_next (rows, h) float32 and h_t (rows, h)
 * bf16. */
void lstm_forward_step(int rows, int hidden, const bf16 *pre, const float *bias,
                       const float *c_prev, float *c_next, bf16 *h) {
    const long h1 = hidden, h4 = 4L * hidden;
    for (long b = 0; b < rows; b++) {
        const bf16 *p = pre + b * h4;
        forward_row(hidden, p, p + h1, p + 2 * h1, p + 3 * h1, bias, bias + h1,
                    bias + 2 * h1, bias + 3 * h1, c_prev + b * h1, c_next + b * h1, h + b * h1);
    }
}

static void backward_row(int hidden, const bf16 *restrict dh_next, const bf16 *restrict dh_out,
                         float *restrict dc, const bf16 *restrict pi,
                         const bf16 *restrict pf, const bf16 *restrict pg,
                         const bf16 *restrict po, const float *restrict bi,
                         const float *restrict bf, const float *restrict bg,
                         const float *restrict bo, const float *restrict c_prev,
                         const float *restrict c_now, bf16 *restrict gi, bf16 *restrict gf,
                         bf16 *restrict gg, bf16 *restrict go, float *restrict si,
                         float *restrict sf, float *restrict sg, float *restrict so) {
    for (int j = 0; j < hidden; j++) {
        float i, f, g, o;
        activations(pi[j], pf[j], pg[j], po[j], bi[j], bf[j], bg[j], bo[j], &i, &f, &g, &o);
        float dh = from_bf16(dh_next[j]) + from_bf16(dh_out[j]);
        float tc = tanh_(c_now[j]);
        float dct = dc[j] + dh * o * (1.0f - tc * tc);  /* d loss / d c_t, all paths */
        float di = dct * g * i * (1.0f - i);
        float df = dct * c_prev[j] * f * (1.0f - f);
        float dg = dct * i * (1.0f - g * g);
        float d_o = dh * tc * o * (1.0f - o);
        gi[j] = to_bf16(di);
        gf[j] = to_bf16(df);
        gg[j] = to_bf16(dg);
        go[j] = to_bf16(d_o);
        si[j] += di;
        sf[j] += df;
        sg[j] += dg;
        so[j] += d_o;
        dc[j] = dct * f;
    }
}

/* One step backward. dh_next: d loss / d h_t through step t + 1's recurrent product,
 * (rows, h) bf16; grad_h: d loss / d h_t from the layer's output, bf16, rows grad_h_ld
 * apart; dc: d loss / d c_t through step t + 1, (rows, h) float32, replaced by d loss /
 * d c_{t-1}; pre, bias: the step's pre-activations and the bias, as forward had them;
 * c_prev, c_now: c_{t-1}, c_t. Writes d loss / d the pre-activations, (rows, 4h) bf16,
 * and adds them over the rows into grad_bias (4h) float32. */
void lstm_backward_step(int rows, int hidden, const bf16 *dh_next, const bf16 *grad_h,
                        long grad_h_ld, float *dc, const bf16 *pre, const float *bias,
                        const float *c_prev, const float *c_now, bf16 *grad_gates,
                        float *grad_bias) {
    const long h1 = hidden, h4 = 4L * hidden;
    for (long b = 0; b < rows; b++) {
        const bf16 *p = pre + b * h4;
        bf16 *g = grad_gates + b * h4;
        float *s = grad_bias;
        backward_row(hidden, dh_next + b * h1, grad_h + b * grad_h_ld, dc + b * h1, p, p + h1,
                     p + 2 * h1, p + 3 * h1, bias, bias + h1, bias + 2 * h1, bias + 3 * h1,
                     c_prev + b * h1, c_now + b * h1, g, g + h1, g + 2 * h1, g + 3 * h1, s,
                     s + h1, s + 2 * h1, s + 3 * h1);
    }
}

/* The output layer's softmax and its gradient. Reductions are written so that the
 * compiler vectorizes them without reassociating float sums (no -ffast-math): the maximum
 * over integer keys, the sum in LANES partial sums. */
#define LANES 16

/* A bf16's bits as an integer of the same order (for non-NaN values), and back: negative
 * values' magnitude bits flipped. */
static inline int32_t order_key(int32_t bits16) { return bits16 ^ ((bits16 >> 31) & 0x7FFF); }

static float row_max(int n, const bf16 *restrict x) {
    int32_t best = -32768;
    for (int j = 0; j < n; j++) {
        int32_t k = order_key((int16_t)x[j]);
        best = k > best ? k : best;
    }
    return from_bf16((bf16)order_key(best));
}

/* e = exp(x - m); returns sum(e). */
static float row_exp(int n, const bf16 *restrict x, float m, float *restrict e) {
    for (int j = 0; j < n; j++) e[j] = exp_approx(from_bf16(x[j]) - m);
    float lane[LANES] = {0};  /* one vector of partial sums */
    int j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) lane[k] += e[j + k];
    float sum = 0.0f;
    for (; j < n; j++) sum += e[j];
    for (int k = 0; k < LANES; k++) sum += lane[k];
    return sum;
}

/* x = bf16(e / sum), the gradient's row; its float32 values added into grad_bias. */
static void row_softmax_out(int n, const float *restrict e, float inv_sum, bf16 *restrict x,
                            float *restrict grad_bias) {
    for (int j = 0; j < n; j++) {
        float p = e[j] * inv_sum;
        x[j] = to_bf16(p);
        grad_bias[j] += p;
    }
}

/* d loss / d logits of the output layer's softmax, a row at a time, in place. logits:
 * (rows, vocab) bf16, rows `ld` apart; targets (rows). For each row: the target's
 * log-probability into target_logp (rows) float32; the row replaced by softmax - keep x
 * onehot(target) in bf16 (keep = 1 - label smoothing's eps); that gradient, in float32,
 * added into grad_bias (vocab). scratch: (vocab) float32. */
void softmax_grad_rows(int rows, int vocab, bf16 *logits, long ld, const int64_t *targets,
                       float keep, float *target_logp, float *grad_bias, float *scratch) {
    for (long r = 0; r < rows; r++) {
        bf16 *x = logits + r * ld;
        int64_t t = targets[r];
        float m = row_max(vocab, x);
        float sum = row_exp(vocab, x, m, scratch);
        target_logp[r] = from_bf16(x[t]) - m - __builtin_logf(sum);
        scratch[t] -= keep * sum;  /* p_t - keep, once divided by sum */
        row_softmax_out(vocab, scratch, 1.0f / sum, x, grad_bias);
    }
}
