/* cpu_layers.h: the CPU's layer kernels over one tile of TILE rows held feature-major
 * (a[i * TILE + r] is feature i of row r), llm.c-style (outputs first, backward accumulates),
 * shared by the fixed networks (cpu_nn.c) and the graph executor (cpu_graph.c). Every inner loop
 * runs along the rows and vectorises; each function's arithmetic order is part of its contract
 * (a graph spelling the seed's nets gives bitwise their losses because both call these). */
#ifndef DF_CPU_LAYERS_H
#define DF_CPU_LAYERS_H

#include <string.h>
#include "cpu.h"

#define TILE 256   /* rows per tile */
/* the layer functions: static in each file that includes them (unused ones are dropped) */
#define LAYER static __attribute__((unused))

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

LAYER void linear_forward(float *restrict out, const float *restrict inp, const float *restrict w,
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
LAYER void linear_silu_forward(float *restrict h, const float *restrict inp,
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
LAYER void linear_backward(float *restrict dinp, float *restrict dw, float *restrict db,
                            const float *restrict dout, const float *restrict inp,
                            const float *restrict w, int I, int O, const float *restrict sz,
                            const float *restrict ss)
{
  int o0 = 0;
  for (; db && o0 + OB <= O; o0 += OB) { /* OB bias sums side by side: a chain of adds each */
    v8 acc[OB];
    for (int o = 0; o < OB; o++) acc[o] = splat8(0.0f);
    for (int r0 = 0; r0 < TILE; r0 += RB)
      for (int o = 0; o < OB; o++) acc[o] += ld8(dout + (o0 + o) * TILE + r0);
    v8 sum = lanes_sum8x(acc);
    for (int o = 0; o < OB; o++) db[o0 + o] += sum[o];
  }
  for (; db && o0 < O; o0++) { /* (db NULL: a layer without bias) */
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

LAYER void act_forward(int act, float *h, float *aux, const float *z, int n)
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

LAYER void act_backward(int act, float *dz, const float *dh, const float *z, const float *aux,
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
LAYER void fourier_forward(float *f, const float *t, const float *w, int half)
{
  for (int j = 0; j < half; j++) {
    float *s = f + j * TILE, *c = f + (half + j) * TILE;
    for (int r = 0; r < TILE; r++) df_fourier(t[r], w[j], &s[r], &c[r]);
  }
}

/* out = a + b, n = features * TILE */
LAYER void add_forward(float *out, const float *a, const float *b, int n)
{
  for (int i = 0; i < n; i++) out[i] = a[i] + b[i];
}

#endif
