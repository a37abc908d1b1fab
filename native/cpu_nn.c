/* cpu_nn.c: score networks on the CPU. Layers are llm.c-style forward/backward functions
 * (outputs first, backward accumulates) over one tile of TILE rows held feature-major
 * (a[i * TILE + r] is feature i of row r), so every inner loop runs along the rows and
 * vectorises. A network's forward and backward run tile by tile, so a tile's activations stay
 * in cache; a DSM step draws, runs forward, the loss and backward for each tile in one pass.
 * Gradients are summed per partition of tiles (NPART, fixed) and then across partitions in
 * order, so the result never depends on how many threads share the work. */
#include <stdlib.h>
#include <string.h>
#include "status.h"
#include "cpu.h"

#define TILE 256   /* rows per tile */
#define NPART 8   /* gradient partitions */
#define PAR_ROWS 512 /* smaller batches stay on one thread */

/* ---- layers over one tile (shapes in comments: [features][TILE]) -------------------------- */

#define INLINE static inline __attribute__((always_inline))
#define OB 8 /* outputs computed together: their accumulators stay in registers */
#define RB 8 /* rows per vector in the backward (its sums over rows add RB lanes) */

/* eight rows as one vector (GCC's vector extension: plain element-wise float arithmetic in
   source order, so the results are those of the scalar loops, whatever the instruction set) */
typedef float v8 __attribute__((vector_size(32)));
/* the helpers below are always inlined, so the ABI of passing a vector (which a build without
   AVX or AVX-512 warns about) never comes into play */
#pragma GCC diagnostic ignored "-Wpsabi"

INLINE v8 ld8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
INLINE v8 splat8(float x) { v8 v = { x, x, x, x, x, x, x, x }; return v; }

/* a * b + c per lane, rounded once: what df_fmaf does to one float (and the CUDA kernels to
   theirs), so every product of a layer rounds as on the GPU */
INLINE v8 fma8(v8 a, v8 b, v8 c)
{
#ifdef __FMA__
  return __builtin_ia32_vfmaddps256(a, b, c);
#else
  v8 r;
  for (int j = 0; j < 8; j++) r[j] = df_fmaf(a[j], b[j], c[j]);
  return r;
#endif
}

/* The forward's rows per vector, vr: it sums nothing across rows, so its values do not depend
   on the width, which is the widest register: sixteen rows with AVX-512 (on Zen 4 no more
   flops per cycle than AVX, but half the instructions and half the weight broadcasts: 6% off
   the seed's sampler), else eight. */
#ifdef __AVX512F__
#define RF 16
typedef float vr __attribute__((vector_size(64)));
INLINE vr fmar(vr a, vr b, vr c)
{
  return __builtin_ia32_vfmaddps512_mask(a, b, c, (unsigned short)0xffff, 4);
}
INLINE vr splatr(float x) { vr v = { x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x }; return v; }
#else
#define RF 8
typedef v8 vr;
INLINE vr fmar(vr a, vr b, vr c) { return fma8(a, b, c); }
INLINE vr splatr(float x) { return splat8(x); }
#endif
INLINE vr ldr(const float *p) { vr v; memcpy(&v, p, sizeof v); return v; }
INLINE void str(float *p, vr v) { memcpy(p, &v, sizeof v); }

/* silu on a vector of rows, with the sigmoid for the backward: df_sigmoid_nonan and
   df_expnegf operation for operation, hence bitwise their values (spec: nn_spec compares a
   net's silu with the tensor op's), but the 16-entry table is read by a permute where the
   scalar code, vectorised by gcc, would gather from memory. AVX2 or AVX-512 builds; other
   builds use the scalar functions. */
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define HAVE_SILU_R 1
#include <immintrin.h>
typedef uint32_t vru __attribute__((vector_size(RF * 4)));
#ifdef __AVX512F__
INLINE vr fmsr(vr a, vr b, vr c) { return _mm512_fmsub_ps(a, b, c); } /* a b - c, one rounding */
INLINE vr exp2m16_r(vru j) /* df_exp2m16 of each lane (a permute looks at j's low 4 bits) */
{
  return _mm512_permutexvar_ps((__m512i)j, _mm512_loadu_ps(df_exp2m16_host));
}
INLINE vr ge0_r(vr z, vr yes, vr no) /* z >= 0 ? yes : no */
{
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ), no, yes);
}
INLINE vr zero_if_gt_r(vr a, float c, vr y) /* a > c ? 0 : y */
{
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(c), _CMP_NGT_UQ), y);
}
#else
INLINE vr fmsr(vr a, vr b, vr c) { return _mm256_fmsub_ps(a, b, c); }
INLINE vr exp2m16_r(vru j) /* two 8-entry permutes, bit 3 of j picks one */
{
  __m256i ji = (__m256i)j;
  __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(df_exp2m16_host), ji);
  __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(df_exp2m16_host + 8), ji);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(ji, 28)));
}
INLINE vr ge0_r(vr z, vr yes, vr no)
{
  return _mm256_blendv_ps(no, yes, _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GE_OQ));
}
INLINE vr zero_if_gt_r(vr a, float c, vr y)
{
  return _mm256_andnot_ps(_mm256_cmp_ps(a, _mm256_set1_ps(c), _CMP_GT_OQ), y);
}
#endif
INLINE vr silu_r(vr z, vr *sig)
{
  vr a = (vr)((vru)z & 0x7fffffffu);
  vr kr = fmar(a, splatr(DF_16LOG2E), splatr(DF_ROUND)), kf = kr - DF_ROUND;
  vr r = fmar(kf, splatr(DF_LN2_16LO), fmsr(kf, splatr(DF_LN2_16HI), a));
  vru kb = (vru)kr;
  vr ts = (vr)((vru)exp2m16_r(kb) - ((kb >> 4) << 23));
  vr pm1 = fmar(r * r, fmar(r, splatr(DF_EXPM_C3), splatr(DF_EXPM_C2)), r);
  vr e = zero_if_gt_r(a, 87.0f, fmar(ts, pm1, ts));
  vr s = ge0_r(z, splatr(1.0f), e) / (1.0f + e);
  *sig = s;
  return z * s;
}
#endif

/* the sum of a vector's lanes, in a fixed order */
INLINE float lanes_sum(v8 a)
{
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* lanes_sum of OB (= 8) vectors at once, the same additions in the same order, as three rounds
   of lane moves and vector adds (halves, then pairs, then neighbours) instead of eight scalar
   trees. The lane moves are written as vectors built from lanes, which gcc and clang both turn
   into shuffles. */
INLINE v8 lanes_sum8x(const v8 a[8])
{
  v8 h[4], q[2];
  for (int k = 0; k < 4; k++) { /* [x0+x4 x1+x5 x2+x6 x3+x7 | the same for y], x, y = a[2k], a[2k+1] */
    v8 x = a[2 * k], y = a[2 * k + 1];
    v8 lo = { x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3] };
    v8 hi = { x[4], x[5], x[6], x[7], y[4], y[5], y[6], y[7] };
    h[k] = lo + hi;
  }
  for (int k = 0; k < 2; k++) { /* (0,4)+(2,6) and (1,5)+(3,7), four vectors' worth */
    v8 x = h[2 * k], y = h[2 * k + 1];
    v8 ev = { x[0], x[1], y[0], y[1], x[4], x[5], y[4], y[5] };
    v8 od = { x[2], x[3], y[2], y[3], x[6], x[7], y[6], y[7] };
    q[k] = ev + od;
  }
  v8 x = q[0], y = q[1];
  v8 c0 = { x[0], x[4], x[2], x[6], y[0], y[4], y[2], y[6] };
  v8 c1 = { x[1], x[5], x[3], x[7], y[1], y[5], y[3], y[7] };
  return c0 + c1;
}

/* out [O][T] = W [O, I] inp [I][T] + b [O]: for OB outputs and RF rows at a time, the bias and
   then the inputs in order, one fma each, accumulated in registers; with `silu` (a constant
   once inlined) the accumulators go through silu_r before they are stored */
INLINE void linear_forward_block(float *restrict out, const float *restrict inp,
                                 const float *restrict w, const float *restrict b,
                                 int I, int o0, int r0, int silu)
{
  vr acc[OB];
  for (int o = 0; o < OB; o++) acc[o] = splatr(b[o0 + o]);
  for (int i = 0; i < I; i++) {
    vr x = ldr(inp + i * TILE + r0);
    for (int o = 0; o < OB; o++) acc[o] = fmar(splatr(w[(o0 + o) * I + i]), x, acc[o]);
  }
  for (int o = 0; o < OB; o++) { /* each stored as soon as it is final (fewer live registers) */
#ifdef HAVE_SILU_R
    vr s;
    if (silu) acc[o] = silu_r(acc[o], &s);
#else
    (void)silu;
#endif
    str(out + (o0 + o) * TILE + r0, acc[o]);
  }
}

static void linear_forward(float *restrict out, const float *restrict inp, const float *restrict w,
                           const float *restrict b, int I,
                           int O)
{
  int o0 = 0;
  for (; o0 + OB <= O; o0 += OB)
    for (int r0 = 0; r0 < TILE; r0 += RF) linear_forward_block(out, inp, w, b, I, o0, r0, 0);
  for (; o0 < O; o0++) /* the outputs left over, one at a time, in the same order; four row
                           vectors at once, so four chains of fmas overlap */
    for (int r0 = 0; r0 < TILE; r0 += 4 * RF) {
      vr acc[4];
      for (int q = 0; q < 4; q++) acc[q] = splatr(b[o0]);
      for (int i = 0; i < I; i++) {
        vr wi = splatr(w[o0 * I + i]);
        for (int q = 0; q < 4; q++) acc[q] = fmar(wi, ldr(inp + i * TILE + r0 + q * RF), acc[q]);
      }
      for (int q = 0; q < 4; q++) str(out + o0 * TILE + r0 + q * RF, acc[q]);
    }
}

#ifdef HAVE_SILU_R
/* a hidden Linear and its silu for a forward nothing goes backward from (samplers): the
   products as linear_forward_block, silu applied to the accumulators in registers, only h
   stored (7% off the seed's sampler; with z and the sigmoid stored for a backward, the training
   step was 3% slower than with the separate passes, so training keeps those) */
static void linear_silu_forward(float *restrict h, const float *restrict inp,
                                const float *restrict w, const float *restrict b, int I, int O)
{
  for (int o0 = 0; o0 + OB <= O; o0 += OB) /* (O is a multiple of OB here) */
    for (int r0 = 0; r0 < TILE; r0 += RF) linear_forward_block(h, inp, w, b, I, o0, r0, 1);
}
#endif

/* dw[o][i0 + k] += sum over the tile's rows of dout[o] inp[i0 + k], for OB outputs and n
   inputs at once (n a constant once inlined; RB lanes per sum, each adding its rows in the same
   order however many run together). One dout load serves the n inputs: the empty asm keeps it
   in a register, where gcc would otherwise fold a load into each of the n fmas and the loop
   would wait on loads (a quarter of the time-embedded net's training step). */
INLINE void linear_dw_inputs(float *restrict dw, const float *restrict dout,
                             const float *restrict inp, int I, int o0, int i0, int n)
{
  v8 acc[3][OB];
  for (int k = 0; k < n; k++)
    for (int o = 0; o < OB; o++) acc[k][o] = splat8(0.0f);
  for (int r0 = 0; r0 < TILE; r0 += RB) {
    v8 x[3];
    for (int k = 0; k < n; k++) x[k] = ld8(inp + (i0 + k) * TILE + r0);
    for (int o = 0; o < OB; o++) {
      v8 g = ld8(dout + (o0 + o) * TILE + r0);
#ifdef __AVX512F__
      __asm__("" : "+x"(g)); /* (only then are there n > 1 fmas to fold it into) */
#endif
      for (int k = 0; k < n; k++) acc[k][o] = fma8(g, x[k], acc[k][o]);
    }
  }
  for (int k = 0; k < n; k++) {
    v8 sum = lanes_sum8x(acc[k]);
    for (int o = 0; o < OB; o++) dw[(o0 + o) * I + i0 + k] += sum[o];
  }
}

/* ... for all inputs: three at a time with AVX-512 (24 accumulators and 4 more vectors fit its
   32 registers), one at a time with AVX's 16 */
INLINE void linear_dw_block(float *restrict dw, const float *restrict dout,
                            const float *restrict inp, int I, int o0)
{
  int i = 0;
#ifdef __AVX512F__
  for (; i + 3 <= I; i += 3) linear_dw_inputs(dw, dout, inp, I, o0, i, 3);
  for (; i + 2 <= I; i += 2) linear_dw_inputs(dw, dout, inp, I, o0, i, 2);
#endif
  for (; i < I; i++) linear_dw_inputs(dw, dout, inp, I, o0, i, 1);
}

/* silu's derivative times the incoming gradient, dh * df_act_bwd(silu, z, s), in its order */
INLINE vr silu_grad_r(vr dh, vr z, vr s) { return dh * (s * (1.0f + z * (1.0f - s))); }

/* dw [O, I] += dout inp^T and db [O] += dout summed over rows; dinp [I][T] = W^T dout
   (overwritten; skipped when dinp is NULL), times silu's derivative at the input's
   pre-activation sz [I][T] (sigmoid ss) when sz is not NULL: the activation's backward applied
   as dinp is stored, instead of in a pass of its own */
static void linear_backward(float *restrict dinp, float *restrict dw, float *restrict db,
                            const float *restrict dout, const float *restrict inp,
                            const float *restrict w, int I, int O, const float *restrict sz,
                            const float *restrict ss)
{
  int o0 = 0;
  for (; o0 + OB <= O; o0 += OB) { /* OB bias sums side by side: a chain of adds each */
    v8 acc[OB];
    for (int o = 0; o < OB; o++) acc[o] = splat8(0.0f);
    for (int r0 = 0; r0 < TILE; r0 += RB)
      for (int o = 0; o < OB; o++) acc[o] += ld8(dout + (o0 + o) * TILE + r0);
    v8 sum = lanes_sum8x(acc);
    for (int o = 0; o < OB; o++) db[o0 + o] += sum[o];
  }
  for (; o0 < O; o0++) {
    v8 acc = splat8(0.0f);
    for (int r0 = 0; r0 < TILE; r0 += RB) acc += ld8(dout + o0 * TILE + r0);
    db[o0] += lanes_sum(acc);
  }
  o0 = 0;
  for (; o0 + OB <= O; o0 += OB) linear_dw_block(dw, dout, inp, I, o0);
  for (; o0 < O; o0++)
    for (int i = 0; i < I; i++) {
      v8 acc = splat8(0.0f);
      for (int r0 = 0; r0 < TILE; r0 += RB) acc = fma8(ld8(dout + o0 * TILE + r0), ld8(inp + i * TILE + r0), acc);
      dw[o0 * I + i] += lanes_sum(acc);
    }
  if (!dinp) return;
  /* no sums over rows here: RF rows per vector, four inputs' chains of fmas side by side */
  for (int r0 = 0; r0 < TILE; r0 += RF) {
    int i = 0;
    for (; i + 4 <= I; i += 4) {
      vr acc[4];
      for (int k = 0; k < 4; k++) acc[k] = splatr(0.0f);
      for (int o = 0; o < O; o++) {
        vr g = ldr(dout + o * TILE + r0);
        for (int k = 0; k < 4; k++) acc[k] = fmar(splatr(w[o * I + i + k]), g, acc[k]);
      }
      for (int k = 0; k < 4; k++) {
        int at = (i + k) * TILE + r0;
        str(dinp + at, sz ? silu_grad_r(acc[k], ldr(sz + at), ldr(ss + at)) : acc[k]);
      }
    }
    for (; i < I; i++) {
      vr acc = splatr(0.0f);
      for (int o = 0; o < O; o++) acc = fmar(splatr(w[o * I + i]), ldr(dout + o * TILE + r0), acc);
      int at = i * TILE + r0;
      str(dinp + at, sz ? silu_grad_r(acc, ldr(sz + at), ldr(ss + at)) : acc);
    }
  }
}

/* h = act(z), aux for the backward (aux == NULL: a forward nothing goes backward from, which
   skips the store); n = features * TILE. The switch picks a copy of the loop specialised to one
   activation, which gcc vectorises (a switch inside the loop it does not). */
INLINE void act_forward_k(int act, float *h, float *aux, const float *z, int n)
{
  if (aux) {
    for (int i = 0; i < n; i++) h[i] = df_act_fwd(act, z[i], &aux[i]);
  } else {
    for (int i = 0; i < n; i++) {
      float unused;
      h[i] = df_act_fwd(act, z[i], &unused);
    }
  }
}

static void act_forward(int act, float *h, float *aux, const float *z, int n)
{
#ifdef HAVE_SILU_R
  if (act == DF_ACT_SILU) { /* n is a multiple of TILE, hence of RF */
    for (int i = 0; i < n; i += RF) {
      vr s;
      str(h + i, silu_r(ldr(z + i), &s));
      if (aux) str(aux + i, s);
    }
    return;
  }
#endif
  switch (act) {
  case DF_ACT_RELU: act_forward_k(DF_ACT_RELU, h, aux, z, n); break;
  case DF_ACT_TANH: act_forward_k(DF_ACT_TANH, h, aux, z, n); break;
  case DF_ACT_GELU: act_forward_k(DF_ACT_GELU, h, aux, z, n); break;
  default: act_forward_k(DF_ACT_SILU, h, aux, z, n); break;
  }
}

/* dz = dh * act'(z) */
INLINE void act_backward_k(int act, float *dz, const float *dh, const float *z, const float *aux,
                           int n)
{
  for (int i = 0; i < n; i++) dz[i] = dh[i] * df_act_bwd(act, z[i], aux[i]);
}

static void act_backward(int act, float *dz, const float *dh, const float *z, const float *aux,
                         int n)
{
  switch (act) {
  case DF_ACT_RELU: act_backward_k(DF_ACT_RELU, dz, dh, z, aux, n); break;
  case DF_ACT_TANH: act_backward_k(DF_ACT_TANH, dz, dh, z, aux, n); break;
  case DF_ACT_GELU: act_backward_k(DF_ACT_GELU, dz, dh, z, aux, n); break;
  default: act_backward_k(DF_ACT_SILU, dz, dh, z, aux, n); break;
  }
}

/* f [2 half][T]: sin(2 pi t W_j) then cos(2 pi t W_j) */
static void fourier_forward(float *f, const float *t, const float *w, int half)
{
  for (int j = 0; j < half; j++) {
    float *s = f + j * TILE, *c = f + (half + j) * TILE;
    for (int r = 0; r < TILE; r++) df_fourier(t[r], w[j], &s[r], &c[r]);
  }
}

/* out = a + b, n = features * TILE */
static void add_forward(float *out, const float *a, const float *b, int n)
{
  for (int i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* ---- the per-tile frame: everything one tile's forward leaves for its backward ------------- */

/* MLP:  in0 [dim+1], then per Linear l: z_l [out_l], and for hidden layers aux_l, h_l
   TEMB: x [dim], t [1], f [embed], ze, ae, e, u, v, av, h [H each], out [dim]
   (sizes in features; each feature is TILE floats) */
typedef struct {
  float *in0, *z[DF_MAXLIN], *aux[DF_MAXLIN], *h[DF_MAXLIN];       /* MLP */
  float *x, *t, *f, *ze, *ae, *e, *u, *v, *av, *hh, *out;           /* TEMB */
} frame;

static int64_t frame_floats(const df_netdesc *nd)
{
  int64_t n = 0;
  if (nd->kind == DF_NET_MLP) {
    n += nd->in[0];
    for (int l = 0; l < nd->nlin; l++) n += l + 1 < nd->nlin ? 3 * nd->out[l] : nd->out[l];
  } else {
    int H = nd->out[0];
    n += nd->dim + 1 + nd->embed + 7 * H + nd->dim;
  }
  return n * TILE;
}

static frame frame_at(const df_netdesc *nd, float *p)
{
  frame f;
  memset(&f, 0, sizeof f);
  if (nd->kind == DF_NET_MLP) {
    f.in0 = p; p += nd->in[0] * TILE;
    for (int l = 0; l < nd->nlin; l++) {
      f.z[l] = p; p += nd->out[l] * TILE;
      if (l + 1 < nd->nlin) {
        f.aux[l] = p; p += nd->out[l] * TILE;
        f.h[l] = p; p += nd->out[l] * TILE;
      }
    }
    f.out = f.z[nd->nlin - 1];
  } else {
    int H = nd->out[0];
    f.x = p; p += nd->dim * TILE;
    f.t = p; p += TILE;
    f.f = p; p += nd->embed * TILE;
    f.ze = p; p += H * TILE;
    f.ae = p; p += H * TILE;
    f.e = p; p += H * TILE;
    f.u = p; p += H * TILE;
    f.v = p; p += H * TILE;
    f.av = p; p += H * TILE;
    f.hh = p; p += H * TILE;
    f.out = p;
  }
  return f;
}

/* the inputs of a tile: rows r0 .. r0 + m - 1 of x [rows, dim] and of t (or t0), zero padded */
static void load_inputs(const df_netdesc *nd, const frame *f, const float *x, const float *t,
                        float t0, int64_t r0, int m)
{
  int d = nd->dim;
  float *xs = nd->kind == DF_NET_MLP ? f->in0 : f->x;
  float *ts = nd->kind == DF_NET_MLP ? f->in0 + d * TILE : f->t;
  for (int c = 0; c < d; c++)
    for (int r = 0; r < TILE; r++) xs[c * TILE + r] = r < m ? x[(r0 + r) * d + c] : 0.0f;
  for (int r = 0; r < TILE; r++) ts[r] = r < m ? (t ? t[r0 + r] : t0) : 0.0f;
}

/* forward of one tile whose inputs are loaded; the output ends in f->out [dim][T]. With
   `time_done`, the time-embedded net's time branch (f->e) is already filled (one t for the
   whole batch: computed once, see cpu_net_forward); without `keep` nothing goes backward from
   it, so the activations' aux values are not stored */
static void tile_forward_part(const df_netdesc *nd, const float *params, const float *fixed,
                              const frame *f, int time_done, int keep)
{
  const float *W[DF_MAXLIN], *B[DF_MAXLIN];
  for (int l = 0; l < nd->nlin; l++) { W[l] = params + nd->woff[l]; B[l] = params + nd->boff[l]; }
  if (nd->kind == DF_NET_MLP) {
    const float *in = f->in0;
    for (int l = 0; l < nd->nlin; l++) {
#ifdef HAVE_SILU_R
      if (!keep && l + 1 < nd->nlin && nd->act == DF_ACT_SILU && nd->out[l] % OB == 0) {
        linear_silu_forward(f->h[l], in, W[l], B[l], nd->in[l], nd->out[l]);
        in = f->h[l];
        continue;
      }
#endif
      linear_forward(f->z[l], in, W[l], B[l], nd->in[l], nd->out[l]);
      if (l + 1 < nd->nlin) {
        act_forward(nd->act, f->h[l], keep ? f->aux[l] : NULL, f->z[l], nd->out[l] * TILE);
        in = f->h[l];
      }
    }
    return;
  }
  int H = nd->out[0];
  if (!time_done) {
    fourier_forward(f->f, f->t, fixed, nd->embed / 2);
    linear_forward(f->ze, f->f, W[0], B[0], nd->embed, H);     /* time: Linear(embed, H) */
    act_forward(nd->act, f->e, f->ae, f->ze, H * TILE);          /*       then the activation */
  }
  linear_forward(f->u, f->x, W[1], B[1], nd->dim, H);         /* x:    Linear(dim, H) */
  add_forward(f->v, f->e, f->u, H * TILE);                     /* summed */
  act_forward(nd->act, f->hh, keep ? f->av : NULL, f->v, H * TILE);
  linear_forward(f->out, f->hh, W[2], B[2], H, nd->dim);      /* out:  Linear(H, dim) */
}

static void tile_forward(const df_netdesc *nd, const float *params, const float *fixed,
                         const frame *f)
{
  tile_forward_part(nd, params, fixed, f, 0, 1);
}

/* backward of one tile from dout [dim][T]; gradients accumulate into g; d1, d2 are scratch of
   maxw features each */
static void tile_backward(const df_netdesc *nd, const float *params, const frame *f,
                          const float *dout, float *g, float *d1, float *d2)
{
  const float *W[DF_MAXLIN];
  for (int l = 0; l < nd->nlin; l++) W[l] = params + nd->woff[l];
  if (nd->kind == DF_NET_MLP) {
    const float *dz = dout;
    for (int l = nd->nlin - 1; l >= 0; l--) {
      const float *in = l > 0 ? f->h[l - 1] : f->in0;
      float *dh = l == 0 ? NULL : dz == d1 ? d2 : d1; /* never the buffer dz is in; none for x, t */
      int fuse = l > 0 && nd->act == DF_ACT_SILU;
      linear_backward(dh, g + nd->woff[l], g + nd->boff[l], dz, in, W[l], nd->in[l], nd->out[l],
                      fuse ? f->z[l - 1] : NULL, fuse ? f->aux[l - 1] : NULL);
      if (l > 0) {
        if (!fuse) act_backward(nd->act, dh, dh, f->z[l - 1], f->aux[l - 1], nd->out[l - 1] * TILE);
        dz = dh;
      }
    }
    return;
  }
  int H = nd->out[0];
  if (nd->act == DF_ACT_SILU) { /* dv (it goes to both branches), silu's derivative fused */
    linear_backward(d2, g + nd->woff[2], g + nd->boff[2], dout, f->hh, W[2], H, nd->dim, f->v, f->av);
  } else {
    linear_backward(d1, g + nd->woff[2], g + nd->boff[2], dout, f->hh, W[2], H, nd->dim, NULL, NULL);
    act_backward(nd->act, d2, d1, f->v, f->av, H * TILE);
  }
  linear_backward(NULL, g + nd->woff[1], g + nd->boff[1], d2, f->x, W[1], nd->dim, H, NULL, NULL);
  act_backward(nd->act, d1, d2, f->ze, f->ae, H * TILE);    /* dze */
  linear_backward(NULL, g + nd->woff[0], g + nd->boff[0], d1, f->f, W[0], nd->embed, H, NULL, NULL);
}

/* ---- workspace -------------------------------------------------------------------------------- */

/* frames for every tile (or NPART when nothing is kept), then per partition: two backward
   scratch blocks and a gradient accumulator */
static int64_t ntiles_of(int64_t rows) { return (rows + TILE - 1) / TILE; }

int64_t cpu_net_workspace(const df_netdesc *nd, int64_t rows)
{
  int64_t nt = ntiles_of(rows);
  return (nt > NPART ? nt : NPART) * frame_floats(nd) +
         NPART * (2 * (int64_t)nd->maxw * TILE + nd->nparams);
}

static float *part_scratch(const df_netdesc *nd, float *ws, int64_t rows, int p)
{
  int64_t nt = ntiles_of(rows);
  float *base = ws + (nt > NPART ? nt : NPART) * frame_floats(nd);
  return base + p * (2 * (int64_t)nd->maxw * TILE + nd->nparams);
}

/* tiles [lo, hi) of partition p */
static void part_range(int64_t nt, int p, int64_t *lo, int64_t *hi)
{
  *lo = nt * p / NPART;
  *hi = nt * (p + 1) / NPART;
}

/* grads += the partitions' sums, in order */
static void add_partitions(const df_netdesc *nd, float *grads, float *ws, int64_t rows)
{
  for (int p = 0; p < NPART; p++) {
    const float *g = part_scratch(nd, ws, rows, p) + 2 * (int64_t)nd->maxw * TILE;
    for (int64_t i = 0; i < nd->nparams; i++) grads[i] += g[i];
  }
}

/* ---- whole-network entry points ------------------------------------------------------------------ */

/* rows r0 .. r0 + m - 1 of a [rows, d] array to or from a tile [d][T] */
static void tile_rows(float *rowmajor, float *tile, int64_t r0, int m, int d, int store)
{
  for (int c = 0; c < d; c++)
    for (int r = 0; r < TILE; r++) {
      if (store && r < m) rowmajor[(r0 + r) * d + c] = tile[c * TILE + r];
      if (!store) tile[c * TILE + r] = r < m ? rowmajor[(r0 + r) * d + c] : 0.0f;
    }
}

/* the time-embedded net's time branch at one time t, e [H] = act(W0 f(t) + b0): what
   fourier_forward, linear_forward and act_forward compute for each row of a tile (each output's
   bias, then its inputs in order, one fma each), for one row, since with one t for a whole batch
   every row's is the same */
static void time_branch_row(const df_netdesc *nd, const float *params, const float *fixed,
                            float t, float *e)
{
  const int E = nd->embed, half = E / 2, H = nd->out[0];
  const float *W0 = params + nd->woff[0], *B0 = params + nd->boff[0];
  float f[DF_NET_MAXEMBED];
  for (int j = 0; j < half; j++) df_fourier(t, fixed[j], &f[j], &f[half + j]);
  for (int o = 0; o < H; o++) {
    float acc = B0[o], aux;
    for (int i = 0; i < E; i++) acc = df_fmaf(W0[(int64_t)o * E + i], f[i], acc);
    e[o] = df_act_fwd(nd->act, acc, &aux);
  }
}

/* a tile's time branch f->e [H][T] from one row of it */
static void fill_time_branch(const df_netdesc *nd, const frame *f, const float *e)
{
  for (int o = 0; o < nd->out[0]; o++)
    for (int r = 0; r < TILE; r++) f->e[o * TILE + r] = e[o];
}

int cpu_net_forward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                    const float *x, const float *t, float t0, int64_t rows, float *out, float *ws,
                    int keep)
{
  (void)dev;
  int64_t nt = ntiles_of(rows), ff = frame_floats(nd);
  /* one time for all rows (a sampler step): the time-embedded net's time branch is the same
     for every row, so it is computed once, for one row, and copied into every tile: the same
     operations on the same inputs, hence the same values */
  int time_once = nd->kind == DF_NET_TEMB && !t && !keep;
  float *e_row = time_once ? (float *)malloc((size_t)nd->out[0] * sizeof(float)) : NULL;
  if (time_once && !e_row) return df_fail(DF_ENOMEM, "out of memory for a forward");
  if (time_once) time_branch_row(nd, params, fixed, t0, e_row);
  /* partitions run in parallel; a kept forward has a frame per tile, else one per partition */
#pragma omp parallel for schedule(static) if (rows >= PAR_ROWS)
  for (int p = 0; p < NPART; p++) {
    int64_t lo, hi;
    part_range(nt, p, &lo, &hi);
    for (int64_t k = lo; k < hi; k++) {
      int m = rows - k * TILE < TILE ? (int)(rows - k * TILE) : TILE;
      frame f = frame_at(nd, ws + (keep ? k : p) * ff);
      load_inputs(nd, &f, x, t, t0, k * TILE, m);
      if (time_once) fill_time_branch(nd, &f, e_row);
      tile_forward_part(nd, params, fixed, &f, time_once, keep);
      tile_rows(out, f.out, k * TILE, m, nd->dim, 1);
    }
  }
  free(e_row);
  return DF_OK;
}

/* ---- a whole sampler run with the network score -------------------------------------------- */

/* the score of one tile at time t_k: the net's input rows from xin [dim][T], then
   sc = out * inv_sigma[k], as df_net_score_eval scales a forward; the time-embedded net's time
   branch comes from etab (one row of it per time, the same for every row) */
static void tile_score(const df_netdesc *nd, const float *params, const float *fixed,
                       const frame *f, const df_plan *p, const float *etab, int64_t k,
                       const float *xin, float *sc)
{
  const int d = nd->dim;
  float *xs = nd->kind == DF_NET_MLP ? f->in0 : f->x, *ts = nd->kind == DF_NET_MLP ? f->in0 + d * TILE : f->t;
  memcpy(xs, xin, (size_t)d * TILE * sizeof(float));
  for (int r = 0; r < TILE; r++) ts[r] = p->t[k];
  if (etab) fill_time_branch(nd, f, etab + k * nd->out[0]);
  tile_forward_part(nd, params, fixed, f, etab != NULL, 0);
  const float inv = p->inv_sigma[k];
  for (int i = 0; i < d * TILE; i++) sc[i] = f->out[i] * inv;
}

/* Each tile of rows goes through all the steps with its activations in L1, the partitions of
   tiles in parallel (rows are independent). The arithmetic is that of the step-by-step path
   (sampler.c through df_net_score_eval, cpu_sample_step): the same forward per row, the same
   scaling, update rules and noise indices, hence bitwise its result. */
int cpu_net_sample(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                   const df_plan *p, float *x, int64_t rows, int nrec, const int64_t *rec_k,
                   float *const *rec_out, uint64_t seed, uint64_t stream, float *ws, int *done)
{
  (void)dev;
  *done = 1; /* every network */
  const int d = nd->dim;
  const int64_t steps = p->steps, n = rows * d, nt = ntiles_of(rows), ff = frame_floats(nd);
  const int H = nd->out[0];
  /* per partition: the tile's x, its score, the Heun predictor's score and the noise */
  float *scratch = (float *)malloc((size_t)NPART * 4 * d * TILE * sizeof(float));
  float *etab = nd->kind == DF_NET_TEMB ? (float *)malloc((size_t)steps * H * sizeof(float)) : NULL;
  if (!scratch || (nd->kind == DF_NET_TEMB && !etab)) {
    free(scratch);
    free(etab);
    return df_fail(DF_ENOMEM, "out of memory for a sampler run");
  }
  if (etab) /* the time branch at t_0 .. t_(steps - 1) */
    for (int64_t k = 0; k < steps; k++) time_branch_row(nd, params, fixed, p->t[k], etab + k * H);
#pragma omp parallel for schedule(static) if (rows >= PAR_ROWS)
  for (int part = 0; part < NPART; part++) {
    frame f = frame_at(nd, ws + part * ff);
    float *xt = scratch + (int64_t)part * 4 * d * TILE, *sc = xt + d * TILE, *s2 = sc + d * TILE;
    float *z = s2 + d * TILE;
    int64_t lo, hi;
    part_range(nt, part, &lo, &hi);
    for (int64_t it = lo; it < hi; it++) {
      const int64_t r0 = it * TILE;
      const int m = rows - r0 < TILE ? (int)(rows - r0) : TILE;
      tile_rows(x, xt, r0, m, d, 0);
      for (int64_t k = 0; k <= steps; k++) {
        for (int r = 0; r < nrec; r++)
          if (rec_k[r] == k) tile_rows(rec_out[r], xt, r0, m, d, 1);
        if (k == steps) break;
        const float c1 = p->c1[k], c2 = p->c2[k];
        tile_score(nd, params, fixed, &f, p, etab, k, xt, sc);
        if (p->method == DF_EULER || (p->method == DF_HEUN && k == steps - 1)) {
          for (int i = 0; i < d * TILE; i++) xt[i] = df_step_euler(xt[i], sc[i], c1);
        } else if (p->method == DF_EULER_MARUYAMA) {
          /* the noise of elements r0 d .. (r0 + m) d - 1 at step k, as cpu_sample_step draws */
          cpu_normal_run(seed, stream, df_noise_index((uint64_t)(r0 * d), (uint64_t)k, (uint64_t)n),
                         (int64_t)m * d, z);
          for (int c = 0; c < d; c++)
            for (int r = 0; r < m; r++)
              xt[c * TILE + r] = df_step_em(xt[c * TILE + r], sc[c * TILE + r], c1, c2, z[r * d + c]);
        } else {
          float *xp = z; /* the predictor, then its score at t_(k+1) */
          for (int i = 0; i < d * TILE; i++) xp[i] = df_step_euler(xt[i], sc[i], c1);
          tile_score(nd, params, fixed, &f, p, etab, k + 1, xp, s2);
          for (int i = 0; i < d * TILE; i++) xt[i] = df_step_heun(xt[i], sc[i], s2[i], c1, c2);
        }
      }
      tile_rows(x, xt, r0, m, d, 1);
    }
  }
  free(scratch);
  free(etab);
  return DF_OK;
}

int cpu_net_backward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                     const float *x, const float *t, float t0, int64_t rows, const float *dout,
                     float *grads, float *ws)
{
  (void)dev; (void)fixed; (void)x; (void)t; (void)t0;
  int64_t nt = ntiles_of(rows), ff = frame_floats(nd);
#pragma omp parallel for schedule(static) if (rows >= PAR_ROWS)
  for (int p = 0; p < NPART; p++) {
    float *sc = part_scratch(nd, ws, rows, p), *d1 = sc, *d2 = sc + nd->maxw * TILE;
    float *g = sc + 2 * (int64_t)nd->maxw * TILE;
    float dd[TILE * DF_NET_MAXDIM];
    int64_t lo, hi;
    memset(g, 0, (size_t)nd->nparams * sizeof(float));
    part_range(nt, p, &lo, &hi);
    for (int64_t k = lo; k < hi; k++) {
      int m = rows - k * TILE < TILE ? (int)(rows - k * TILE) : TILE;
      frame f = frame_at(nd, ws + k * ff);
      for (int c = 0; c < nd->dim; c++)
        for (int r = 0; r < TILE; r++) dd[c * TILE + r] = r < m ? dout[(k * TILE + r) * nd->dim + c] : 0.0f;
      tile_backward(nd, params, &f, dd, g, d1, d2);
    }
  }
  add_partitions(nd, grads, ws, rows);
  return DF_OK;
}

int cpu_dsm_step(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                 float *grads, const df_dsm *job, float *loss, float *ws)
{
  (void)dev;
  const int d = nd->dim;
  const int64_t B = job->batch, nt = ntiles_of(B), ff = frame_floats(nd);
  const float scale = 2.0f / (float)((double)B * d); /* d loss / d out = 2 (out + eta) / (B d) */
  double part_loss[NPART], total = 0.0;
#pragma omp parallel for schedule(static) if (B >= PAR_ROWS)
  for (int p = 0; p < NPART; p++) {
    float *sc = part_scratch(nd, ws, B, p), *d1 = sc, *d2 = sc + nd->maxw * TILE;
    float *g = sc + 2 * (int64_t)nd->maxw * TILE;
    frame f = frame_at(nd, ws + p * ff);
    float *xs = nd->kind == DF_NET_MLP ? f.in0 : f.x, *ts = nd->kind == DF_NET_MLP ? f.in0 + d * TILE : f.t;
    float u[TILE], sig[TILE], eta[TILE * DF_NET_MAXDIM], dout[TILE * DF_NET_MAXDIM];
    int64_t src[TILE];
    const df_diffuser D = job->diff; /* a local copy: its fields are loop invariants */
    double part = 0.0;
    int64_t lo, hi;
    memset(g, 0, (size_t)nd->nparams * sizeof(float));
    part_range(nt, p, &lo, &hi);
    for (int64_t k = lo; k < hi; k++) {
      int64_t r0 = k * TILE;
      int m = B - r0 < TILE ? (int)(B - r0) : TILE;
      /* draws: times, noise (row-major, as a [B, d] tensor of normals), data rows */
      cpu_uniform_run(job->seed, job->st_t, (uint64_t)r0, m, u);
      cpu_normal_run(job->seed, job->st_eta, (uint64_t)(r0 * d), (int64_t)m * d, eta);
      /* times and widths, then the noised inputs: loops along the tile's rows */
      for (int r = 0; r < m; r++) ts[r] = df_dsm_time(u[r], job->tol);
      for (int r = m; r < TILE; r++) ts[r] = 0.0f;
      if (D.kind == DF_VE) { /* the loop gcc vectorises: no diffuser kind inside */
        const float l = (float)D.lnk;
        for (int r = 0; r < TILE; r++) sig[r] = sqrtf(df_ve_sigma2(l, ts[r]));
      } else {
        for (int r = 0; r < TILE; r++) sig[r] = sqrtf(df_diffuser_sigma2(&D, ts[r]));
      }
      if (job->sample) {
        for (int r = 0; r < m; r++)
          src[r] = df_rand_index(job->seed, job->st_idx, (uint64_t)(r0 + r), job->data_rows);
        for (int c = 0; c < d; c++)
          for (int r = 0; r < m; r++) xs[c * TILE + r] = job->data[src[r] * d + c] + sig[r] * eta[r * d + c];
      } else { /* the data is the batch: rows in order, no index (loops gcc vectorises) */
        const float *x0 = job->data + r0 * d;
        for (int c = 0; c < d; c++)
          for (int r = 0; r < m; r++) xs[c * TILE + r] = x0[r * d + c] + sig[r] * eta[r * d + c];
      }
      for (int c = 0; c < d; c++)
        for (int r = m; r < TILE; r++) xs[c * TILE + r] = 0.0f;
      tile_forward(nd, params, fixed, &f);
      /* the loss in 8 double lanes per tile, added in a fixed order */
      double acc[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
      for (int c = 0; c < d; c++) {
        float *res = dout + c * TILE; /* the residuals, then scaled in place */
        for (int r = 0; r < m; r++) res[r] = f.out[c * TILE + r] + eta[r * d + c];
        for (int r = m; r < TILE; r++) res[r] = 0.0f; /* adds 0 to the sums below */
        for (int r = 0; r < TILE; r += 8)
          for (int j = 0; j < 8; j++) acc[j] += (double)res[r + j] * (double)res[r + j];
        for (int r = 0; r < TILE; r++) res[r] = scale * res[r];
      }
      part += ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
      tile_backward(nd, params, &f, dout, g, d1, d2);
    }
    part_loss[p] = part;
  }
  for (int p = 0; p < NPART; p++) total += part_loss[p]; /* in order, whatever the threads */
  add_partitions(nd, grads, ws, B);
  *loss = (float)(total / ((double)B * d));
  return DF_OK;
}

int cpu_adam(int dev, float *p, const float *g, float *m, float *v, int64_t n,
             const df_adam_hp *hp)
{
  (void)dev;
  for (int64_t i = 0; i < n; i++)
    p[i] = df_adam_update(p[i], g[i], &m[i], &v[i], hp->b1, hp->b2, hp->step, hp->sqrt_bc2,
                          hp->eps, hp->wd);
  return DF_OK;
}
