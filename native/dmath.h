/* dmath.h: per-element formulas and the Philox4x32-10 generator, shared by the CPU backend (cc)
 * and the CUDA kernels (nvcc), so that both devices run the very same arithmetic.
 *
 * Everything here uses only IEEE-exact operations (+ - * /, sqrt, fused multiply-add through
 * df_fmaf, conversions, comparisons), and both compilers are told not to contract a*b+c into fma
 * on their own (-ffp-contract=off, nvcc -fmad=false): every fma is written out, so both devices
 * round at the same places. That is why exp, log, sin, cos and tanh are written out below instead
 * of taken from libm or CUDA's math library: a seed gives bitwise the same random numbers on the
 * CPU and the GPU, and the elementwise ops agree to the last bit. The functions are branch-free
 * where it matters so that gcc vectorises the CPU loops. Accuracy (spec/dmath_spec.lua): within 2 ulp of the
 * correctly rounded result for exp, log, tanh, and for sin, cos with |x| < 1e6. */
#ifndef DF_DMATH_H
#define DF_DMATH_H

#include <stdint.h>
#include <string.h>
#include <math.h>

#ifdef __CUDACC__
#define DF_FN static __host__ __device__ __forceinline__
#else
#define DF_FN static inline
#endif

/* ---- op codes shared by the backend tables ---------------------------------------------- */

enum { DF_ADD, DF_SUB, DF_MUL, DF_DIV, DF_POW, DF_MAXIMUM, DF_MINIMUM, DF_NBINARY };

enum {
  DF_NEG, DF_EXP, DF_LOG, DF_SQRT, DF_ABS, DF_SIN, DF_COS, DF_TANH, DF_SILU, DF_SQUARE,
  DF_SIGMOID, DF_RELU, DF_GELU, DF_NORMCDF, DF_NUNARY
};

/* ---- bit casts -------------------------------------------------------------------------- */

DF_FN float df_from_bits(uint32_t u)
{
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f; /* memcpy, not a union: gcc vectorises loops through it */
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

DF_FN uint32_t df_to_bits(float f)
{
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

/* a * b + c rounded once (IEEE fused multiply-add): one instruction on the GPU and on x86 with
   FMA3 (-march=native), libm's exact fmaf elsewhere, the same result everywhere */
DF_FN float df_fmaf(float a, float b, float c) { return fmaf(a, b, c); }

/* 2^k for integer k in [-126, 127] */
DF_FN float df_pow2i(int k) { return df_from_bits((uint32_t)(k + 127) << 23); }

/* ---- exp, expm1, log ------------------------------------------------------------------------ */

/* e^r for |r| <= ln2 / 2: 1 + r + r^2 q(r) with q a near-minimax quartic (relative error of the
   polynomial 3e-9; below one ulp once rounded in float), by Horner's rule in fmas */
DF_FN float df_exp_poly(float r)
{
  float q = df_fmaf(r, 0.0013814297082631859f, 0.0083687101246043699f);
  q = df_fmaf(q, r, 0.041668393031995876f);
  q = df_fmaf(q, r, 0.16666520686577568f);
  q = df_fmaf(q, r, 0.49999993428047707f);
  q = df_fmaf(q, r, 1.0f);
  return df_fmaf(q, r, 1.0f);
}

/* the reduction e^x = 2^k e^r, k = round(x / ln 2), |r| <= ln2/2: ROUND (1.5 * 2^23) rounds to
   the nearest integer without a branch; ln 2 is split so that k * LN2_HI is exact */
#define DF_LOG2E 1.44269504088896341f
#define DF_LN2_HI 0.693145751953125f
#define DF_LN2_LO 1.42860682030941723e-6f
#define DF_ROUND 12582912.0f

DF_FN float df_expf(float x)
{
  float xc = x > 89.0f ? 89.0f : (x >= -104.0f ? x : -104.0f); /* (NaN too: (int)NaN is UB) */
  float kf = df_fmaf(xc, DF_LOG2E, DF_ROUND) - DF_ROUND;
  float r = df_fmaf(-kf, DF_LN2_LO, df_fmaf(-kf, DF_LN2_HI, xc));
  float p = df_exp_poly(r);
  int k = (int)kf;
  int k1 = k / 2; /* two factors keep each power of two normal down to k = -150 */
  float y = p * df_pow2i(k1) * df_pow2i(k - k1);
  return x != x ? x : y;
}

/* e^x - 1 without the cancellation near 0 (tanh needs it) */
DF_FN float df_expm1f(float x)
{
  float t = x * (1.0f + x * (0.5f + x * (1.66666666666666667e-1f + x * (4.16666666666666667e-2f +
            x * (8.33333333333333333e-3f + x * (1.38888888888888889e-3f +
            x * (1.98412698412698413e-4f + x * 2.48015873015873016e-5f)))))));
  return (x > -0.5f && x < 0.5f) ? t : df_expf(x) - 1.0f;
}

DF_FN float df_logf(float x)
{
  /* x = m 2^e with m in [sqrt(1/2), sqrt(2)); log(m) = log1p(f) = f - s (f - 2R(s^2)),
     s = f / (2 + f), R the atanh series: leading term f is exact */
  const float LN2_HI = 0.693145751953125f, LN2_LO = 1.42860682030941723e-6f;
  int sub = x < 1.17549435e-38f;                 /* subnormal (or <= 0, sorted out below) */
  float xs = sub ? x * 8388608.0f : x;            /* 2^23 */
  uint32_t u = df_to_bits(xs);
  int e = (int)((u >> 23) & 0xffu) - 127 - (sub ? 23 : 0);
  float m = df_from_bits((u & 0x007fffffu) | 0x3f800000u);
  int big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e += big;
  float f = m - 1.0f;
  float s = f / (2.0f + f);
  float z = s * s;
  float R = z * (3.33333333333333333e-1f + z * (2.0e-1f + z * (1.42857142857142857e-1f +
            z * 1.11111111111111111e-1f)));
  float lm = f - s * (f - 2.0f * R);
  float ef = (float)e;
  float y = ef * LN2_HI + (lm + ef * LN2_LO);
  y = x == 0.0f ? -INFINITY : y;
  y = x < 0.0f ? NAN : y;
  y = x == INFINITY ? x : y;
  return x != x ? x : y;
}

/* ---- sin, cos -------------------------------------------------------------------------------- */

/* sin and cos of r in [-pi/4, pi/4] (Taylor to r^9 and r^10: truncation below 2e-9), by
   Horner's rule in fmas */
DF_FN float df_sin_kernel(float r)
{
  float z = r * r;
  float p = df_fmaf(z, 2.75573192239858907e-6f, -1.98412698412698413e-4f);
  p = df_fmaf(p, z, 8.33333333333333333e-3f);
  p = df_fmaf(p, z, -1.66666666666666667e-1f);
  float s = df_fmaf(r * z, p, r);
  return z == 0.0f ? r : s; /* keeps the sign of -0 */
}

DF_FN float df_cos_kernel(float r)
{
  float z = r * r;
  float p = df_fmaf(z, -2.75573192239858907e-7f, 2.48015873015873016e-5f);
  p = df_fmaf(p, z, -1.38888888888888889e-3f);
  p = df_fmaf(p, z, 4.16666666666666667e-2f);
  p = df_fmaf(p, z, -0.5f);
  return df_fmaf(p, z, 1.0f);
}

/* sin and cos of k pi/2 + r from r in [-pi/4, pi/4] and q = k mod 4 (any k, as two's
   complement bits): the kernels, swapped in odd quadrants, and their signs flipped by the sign
   bit (sin negated in quadrants 2, 3, cos in 1, 2) */
DF_FN void df_sincos_quadrant(uint32_t q, float r, float *sinx, float *cosx)
{
  float s = df_sin_kernel(r), c = df_cos_kernel(r);
  float sv = (q & 1u) ? c : s, cv = (q & 1u) ? s : c;
  *sinx = df_from_bits(df_to_bits(sv) ^ ((q & 2u) << 30));
  *cosx = df_from_bits(df_to_bits(cv) ^ (((q + 1u) & 2u) << 30));
}

/* sin and cos of x: x = k pi/2 + r, reduced in double with pi/2 in three parts (exact products
   for |k| < 2^23); beyond |x| ~ 1e7 float inputs are coarser than the period anyway, and r is
   clamped so the result stays in [-1, 1] */
DF_FN void df_sincosf(float x, float *sinx, float *cosx)
{
  const double TWO_OVER_PI = 0.6366197723675814, PIO2_HI = 1.570796325802803,
               PIO2_MID = 9.920935791635221e-10, PIO2_LO = 5.170182981794105e-19;
  int bad = x != x || x == INFINITY || x == -INFINITY;
  double xd = bad ? 0.0 : (double)x; /* (NaN would reach the int conversion below: UB) */
  double kd = floor(xd * TWO_OVER_PI + 0.5);
  double rd = ((xd - kd * PIO2_HI) - kd * PIO2_MID) - kd * PIO2_LO;
  float r = (float)rd;
  r = r > 0.7853982f ? 0.7853982f : (r < -0.7853982f ? -0.7853982f : r);
  int q = (int)(kd - 4.0 * floor(kd * 0.25)); /* k mod 4, also for huge k */
  float sv, cv;
  df_sincos_quadrant((uint32_t)q, r, &sv, &cv);
  *sinx = bad ? NAN : sv;
  *cosx = bad ? NAN : cv;
}

DF_FN float df_sinf(float x) { float s, c; df_sincosf(x, &s, &c); return s; }
DF_FN float df_cosf(float x) { float s, c; df_sincosf(x, &s, &c); return c; }

/* sin(2 pi u) and cos(2 pi u) for u in [0, 1): the quadrant comes from u exactly */
DF_FN void df_sincos2pi(float u, float *s, float *c)
{
  float u4 = u * 4.0f;
  float qf = floorf(u4 + 0.5f);
  float r = (u4 - qf) * 1.57079632679489662f;
  df_sincos_quadrant((uint32_t)(int)qf, r, s, c);
}

/* ---- tanh, sigmoid, activations ---------------------------------------------------------- */

DF_FN float df_tanhf(float x)
{
  /* odd Taylor series below 1/2 (next term < 1e-9 relative), else expm1(2a) / (expm1(2a) + 2) */
  float a = fabsf(x), z = a * a;
  float ts = a + a * z * (-3.33333333333333333e-1f + z * (1.33333333333333333e-1f +
             z * (-5.39682539682539683e-2f + z * (2.18694885361552028e-2f +
             z * (-8.86323552990219656e-3f + z * (3.59212803657248102e-3f +
             z * (-1.45583438705131827e-3f + z * (5.90027440945585949e-4f +
             z * -2.39129114243552481e-4f))))))));
  float e = df_expm1f(2.0f * (a > 9.0f ? 9.0f : a));
  float t = a > 9.0f ? 1.0f : (a < 0.5f ? ts : e / (e + 2.0f));
  return x != x ? x : copysignf(t, x);
}

/* 2^(-j/16) for j = 0..15, rounded to float: the table of df_expnegf (one copy per device) */
#define DF_EXP2M16_VALUES                                                                       \
  { 0x1p+0f, 0x1.ea4afap-1f, 0x1.d5818ep-1f, 0x1.c199bep-1f, 0x1.ae89fap-1f, 0x1.9c4918p-1f,  \
    0x1.8ace54p-1f, 0x1.7a1148p-1f, 0x1.6a09e6p-1f, 0x1.5ab07ep-1f, 0x1.4bfdaep-1f,           \
    0x1.3dea64p-1f, 0x1.306fe0p-1f, 0x1.2387a6p-1f, 0x1.172b84p-1f, 0x1.0b5586p-1f }
static const float df_exp2m16_host[16] __attribute__((unused)) = DF_EXP2M16_VALUES;
#ifdef __CUDACC__
static __device__ const float df_exp2m16_dev[16] = DF_EXP2M16_VALUES;
#endif
DF_FN float df_exp2m16(uint32_t j)
{
#ifdef __CUDA_ARCH__
  return df_exp2m16_dev[j & 15u];
#else
  return df_exp2m16_host[j & 15u];
#endif
}

/* the constants of df_expnegf (named: cpu_nn.c's vector silu uses them too): 16 / ln 2, ln 2 / 16
   in two parts (k * HI exact for k < 2^12), and e^r - 1 ~ r + r^2 (C2 + C3 r) on |r| <= ln2/32
   (error 1.6e-9, fitted for the least maximum) */
#define DF_16LOG2E 0x1.715476p+4f
#define DF_LN2_16HI 0x1.62e000p-5f
#define DF_LN2_16LO 0x1.0bfbe8p-19f
#define DF_EXPM_C2 0x1.00022p-1f
#define DF_EXPM_C3 0x1.55576ep-3f

/* e^-a for a >= 0, the sigmoid's exponential. e^-a = 2^(-k/16) e^r with k = round(16 a / ln 2):
   the table gives 2^(-(k mod 16)/16), k / 16 goes into its exponent, and e^r needs only a cubic:
   8 multiplies or fmas in all where df_expf needs 10, and the sigmoid is where the seed's
   networks spend their time. Within 1.1 ulp. Results below FLT_MIN (a > 87) are flushed to zero
   (an absolute error under 1.7e-38, where the sigmoid is 0 to the last bit anyway); for a NaN
   the value is unspecified: the callers below sort NaN out themselves, where it costs nothing. */
DF_FN float df_expnegf(float a)
{
  float kr = df_fmaf(a, DF_16LOG2E, DF_ROUND), kf = kr - DF_ROUND;
  float r = df_fmaf(kf, DF_LN2_16LO, df_fmaf(kf, DF_LN2_16HI, -a)); /* |r| <= ln2/32 */
  /* kr's low bits are k (ROUND's are zero); for a <= 87, k / 16 <= 125, so the scaled table
     entry stays a normal number and the exponent subtraction is exact */
  uint32_t kb = df_to_bits(kr);
  float ts = df_from_bits(df_to_bits(df_exp2m16(kb)) - ((kb >> 4) << 23));
  float pm1 = df_fmaf(r * r, df_fmaf(r, DF_EXPM_C3, DF_EXPM_C2), r); /* e^r - 1 */
  float y = df_fmaf(ts, pm1, ts);
  return a > 87.0f ? 0.0f : y;
}

/* 1 / (1 + e^-x) through e^-|x| <= 1, so nothing overflows; the numerator is 1 or e^-|x|, one
   division. For x not NaN: silu's x * s is NaN for a NaN x whatever s is, and its derivative
   is too, so the activations skip the check that df_sigmoidf makes. */
DF_FN float df_sigmoid_nonan(float x)
{
  float e = df_expnegf(fabsf(x));
  return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}
DF_FN float df_sigmoidf(float x) { return x != x ? x : df_sigmoid_nonan(x); }
DF_FN float df_siluf(float x) { return x * df_sigmoid_nonan(x); }
DF_FN float df_reluf(float x) { return x < 0.0f ? 0.0f : x; }

/* GELU, tanh form (as GPT-2 and llm.c): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
DF_FN float df_geluf(float x)
{
  float u = 0.797884560802865356f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + df_tanhf(u));
}

/* the standard normal CDF, through erfc in double (the tails keep their relative accuracy) */
DF_FN float df_normcdff(float x) { return (float)(0.5 * erfc(-0.70710678118654752 * (double)x)); }

/* ---- elementwise op dispatch ------------------------------------------------------------- */

DF_FN float df_unary_apply(int op, float x)
{
  switch (op) {
  case DF_NEG: return -x;
  case DF_EXP: return df_expf(x);
  case DF_LOG: return df_logf(x);
  case DF_SQRT: return sqrtf(x);
  case DF_ABS: return fabsf(x);
  case DF_SIN: return df_sinf(x);
  case DF_COS: return df_cosf(x);
  case DF_TANH: return df_tanhf(x);
  case DF_SILU: return df_siluf(x);
  case DF_SQUARE: return x * x;
  case DF_SIGMOID: return df_sigmoidf(x);
  case DF_RELU: return df_reluf(x);
  case DF_GELU: return df_geluf(x);
  case DF_NORMCDF: return df_normcdff(x);
  default: return NAN;
  }
}

DF_FN float df_binary_apply(int op, float a, float b)
{
  switch (op) {
  case DF_ADD: return a + b;
  case DF_SUB: return a - b;
  case DF_MUL: return a * b;
  case DF_DIV: return a / b;
  case DF_POW: return (float)pow((double)a, (double)b); /* double keeps it exact to rounding */
  case DF_MAXIMUM: return (a != a || a > b) ? a : b;    /* NaN propagates, as torch */
  case DF_MINIMUM: return (a != a || a < b) ? a : b;
  default: return NAN;
  }
}

/* ---- Philox4x32-10 (Salmon et al., SC'11), keyed by (seed, stream, element index) --------- */

/* one round on the counter words, under the round's key (k0, k1) */
DF_FN void df_philox_round(uint32_t *c0, uint32_t *c1, uint32_t *c2, uint32_t *c3, uint32_t k0,
                           uint32_t k1)
{
  uint64_t p0 = (uint64_t)0xD2511F53u * *c0, p1 = (uint64_t)0xCD9E8D57u * *c2;
  uint32_t n0 = (uint32_t)(p1 >> 32) ^ *c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ *c3 ^ k1;
  *c0 = n0; *c1 = (uint32_t)p1; *c2 = n2; *c3 = (uint32_t)p0;
}

/* the key schedule: the Weyl increments between rounds */
DF_FN void df_philox_bump(uint32_t *k0, uint32_t *k1) { *k0 += 0x9E3779B9u; *k1 += 0xBB67AE85u; }

DF_FN void df_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; round++) {
    df_philox_round(&c0, &c1, &c2, &c3, k0, k1);
    df_philox_bump(&k0, &k1);
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* the four words of block `block` of stream `stream` under `seed`: element i of a random tensor
   reads word i % 4 of block i / 4, so the numbers depend on the index, never on the shape,
   the device or how the work is split */
DF_FN void df_philox_block(uint64_t seed, uint64_t stream, uint64_t block, uint32_t w[4])
{
  uint32_t ctr[4], key[2];
  ctr[0] = (uint32_t)block; ctr[1] = (uint32_t)(block >> 32);
  ctr[2] = (uint32_t)stream; ctr[3] = (uint32_t)(stream >> 32);
  key[0] = (uint32_t)seed; key[1] = (uint32_t)(seed >> 32);
  df_philox4x32_10(ctr, key, w);
}

/* uniform in [0, 1) from the top 24 bits */
DF_FN float df_u01(uint32_t w) { return (float)(w >> 8) * 5.9604644775390625e-8f; }

/* Box-Muller: words (w0, w1) give two standard normals */
DF_FN void df_box_muller(uint32_t w0, uint32_t w1, float *z0, float *z1)
{
  float u1 = (float)((w0 >> 8) + 1u) * 5.9604644775390625e-8f; /* (0, 1] */
  float r = sqrtf(-2.0f * df_logf(u1));
  float s, c;
  df_sincos2pi(df_u01(w1), &s, &c);
  *z0 = r * c;
  *z1 = r * s;
}

/* the four normals of one block, in element order */
DF_FN void df_normal4(const uint32_t w[4], float z[4])
{
  df_box_muller(w[0], w[1], &z[0], &z[1]);
  df_box_muller(w[2], w[3], &z[2], &z[3]);
}

/* element i of the uniform / normal stream (one block per call: loops that fill a whole tensor
   use df_philox_block once per four elements instead) */
DF_FN float df_rand_at(uint64_t seed, uint64_t stream, uint64_t i)
{
  uint32_t w[4];
  df_philox_block(seed, stream, i >> 2, w);
  return df_u01(w[i & 3]);
}

DF_FN float df_randn_at(uint64_t seed, uint64_t stream, uint64_t i)
{
  uint32_t w[4];
  float z0, z1;
  df_philox_block(seed, stream, i >> 2, w);
  int pair = (int)(i & 2); /* only the Box-Muller pair this element needs */
  df_box_muller(w[pair], w[pair + 1], &z0, &z1);
  return (i & 1) ? z1 : z0;
}

/* a Rademacher sign (+1 or -1) from bit 8 of the word, element i of a stream (the probes of
   Hutchinson's estimator) */
DF_FN float df_rademacher_at(uint64_t seed, uint64_t stream, uint64_t i)
{
  uint32_t w[4];
  df_philox_block(seed, stream, i >> 2, w);
  return (w[i & 3] >> 8) & 1u ? 1.0f : -1.0f;
}

/* ---- diffusers: g(t) and sigma(t)^2 --------------------------------------------------------- */

enum { DF_VE, DF_POWER };

/* a diffuser's parameters; VE: g = kappa^t, sigma^2 = (kappa^(2t) - 1) / (2 ln kappa) (t at
   kappa = 1); POWER: g = kappa t^alpha, sigma^2 = kappa^2 t^(2 alpha + 1) / (2 alpha + 1) */
typedef struct df_diffuser {
  int kind;
  double kappa, alpha, lnk; /* lnk = ln kappa */
} df_diffuser;

DF_FN float df_diffuser_g(const df_diffuser *D, float t)
{
  if (D->kind == DF_VE) return df_expf(t * (float)D->lnk);
  float a = (float)D->alpha;
  float ta = t > 0.0f ? df_expf(a * df_logf(t)) : (a == 0.0f ? 1.0f : (a > 0.0f ? 0.0f : INFINITY));
  return (float)D->kappa * ta;
}

/* VE's sigma^2 with l = ln kappa as a float (expm1 keeps kappa ~ 1 exact) */
DF_FN float df_ve_sigma2(float l, float t)
{
  return l == 0.0f ? t : df_expm1f(2.0f * t * l) / (2.0f * l);
}

DF_FN float df_diffuser_sigma2(const df_diffuser *D, float t)
{
  if (D->kind == DF_VE) return df_ve_sigma2((float)D->lnk, t);
  float p = (float)(2.0 * D->alpha + 1.0), k = (float)D->kappa;
  return t > 0.0f ? k * k * df_expf(p * df_logf(t)) / p : 0.0f;
}

/* ---- Gaussian mixtures carried by the heat flow ------------------------------------------- */

/* K isotropic components in R^d: log weights (normalised), means [K*d], variances at t = 0.
   At time t each variance grows by sigma(t)^2. */
typedef struct df_mixture {
  int k, d;
  const float *logw, *mu, *var0;
} df_mixture;

/* log N(x; mu_j, v_j I) + log w_j, without the -d/2 log(2 pi) */
DF_FN float df_mixture_logterm(const df_mixture *m, int j, float sig2, const float *x)
{
  float v = m->var0[j] + sig2, r2 = 0.0f;
  for (int c = 0; c < m->d; c++) {
    float e = x[c] - m->mu[j * m->d + c];
    r2 += e * e;
  }
  return m->logw[j] - 0.5f * (float)m->d * df_logf(v) - r2 / (2.0f * v);
}

/* The responsibilities' pieces for one row, by log-sum-exp: lmax = max_j l_j and z = sum_j
   exp(l_j - lmax) in j order; the exponentials cached in e[] for the first DF_MIX_CACHE
   components (the rest recomputed by df_mixture_e: the same operations on the same inputs, so
   the same values either way). On the GPU nothing is cached (local memory costs more than the
   recomputation). */
#ifdef __CUDA_ARCH__
#define DF_MIX_CACHE 1
#else
#define DF_MIX_CACHE 32
#endif
DF_FN float df_mixture_lse(const df_mixture *m, float sig2, const float *x, float *e, float *lmax)
{
  float lm = -INFINITY, z = 0.0f;
  for (int j = 0; j < m->k; j++) {
    float l = df_mixture_logterm(m, j, sig2, x);
    if (j < DF_MIX_CACHE) e[j] = l;
    lm = l > lm ? l : lm;
  }
  for (int j = 0; j < m->k; j++) {
    float ej = df_expf((j < DF_MIX_CACHE ? e[j] : df_mixture_logterm(m, j, sig2, x)) - lm);
    if (j < DF_MIX_CACHE) e[j] = ej;
    z += ej;
  }
  *lmax = lm;
  return z;
}
/* exp(l_j - lmax) of component j, after df_mixture_lse filled e */
DF_FN float df_mixture_e(const df_mixture *m, int j, float sig2, const float *x, const float *e, float lmax)
{
  return j < DF_MIX_CACHE ? e[j] : df_expf(df_mixture_logterm(m, j, sig2, x) - lmax);
}

/* the exact score of the mixture at sigma(t)^2 = sig2 for one row x[0..d): a responsibility-
   weighted sum of the component scores, responsibilities by log-sum-exp so no term overflows */
DF_FN void df_mixture_score_row(const df_mixture *m, float sig2, const float *x, float *out)
{
  float e[DF_MIX_CACHE], lmax;
  const float z = df_mixture_lse(m, sig2, x, e, &lmax);
  for (int c = 0; c < m->d; c++) out[c] = 0.0f;
  for (int j = 0; j < m->k; j++) {
    float ej = df_mixture_e(m, j, sig2, x, e, lmax), v = m->var0[j] + sig2;
    for (int c = 0; c < m->d; c++) out[c] += ej * ((m->mu[j * m->d + c] - x[c]) / v);
  }
  for (int c = 0; c < m->d; c++) out[c] /= z;
}

/* the divergence of the mixture's score at sig2 (the Laplacian of log p_t) for one row:
   sum_j r_j (|s_j|^2 - d / v_j) - |s|^2, with s_j = (mu_j - x) / v_j the component scores, r_j
   the responsibilities and s = sum_j r_j s_j (by log-sum-exp, as the score) */
DF_FN float df_mixture_div_row(const df_mixture *m, float sig2, const float *x)
{
  float e[DF_MIX_CACHE], lmax, acc = 0.0f;
  const float z = df_mixture_lse(m, sig2, x, e, &lmax);
  float s2 = 0.0f;
  for (int c = 0; c < m->d; c++) {
    float sc = 0.0f;
    for (int j = 0; j < m->k; j++) {
      float r = df_mixture_e(m, j, sig2, x, e, lmax) / z, v = m->var0[j] + sig2;
      sc += r * ((m->mu[j * m->d + c] - x[c]) / v);
    }
    s2 += sc * sc;
  }
  for (int j = 0; j < m->k; j++) {
    float r = df_mixture_e(m, j, sig2, x, e, lmax) / z, v = m->var0[j] + sig2, sj2 = 0.0f;
    for (int c = 0; c < m->d; c++) {
      float ec = (m->mu[j * m->d + c] - x[c]) / v;
      sj2 += ec * ec;
    }
    acc += r * (sj2 - (float)m->d / v);
  }
  return acc - s2;
}

/* J v for one row, J the Jacobian of the mixture's score (the Hessian of log p_t):
   J v = sum_j r_j (-v / v_j + s_j (s_j - s) . v) */
DF_FN void df_mixture_jvp_row(const df_mixture *m, float sig2, const float *x, const float *v,
                              float *out)
{
  float e[DF_MIX_CACHE], lmax, sv = 0.0f;
  const float z = df_mixture_lse(m, sig2, x, e, &lmax);
  for (int c = 0; c < m->d; c++) { /* s . v */
    float sc = 0.0f;
    for (int j = 0; j < m->k; j++) {
      float r = df_mixture_e(m, j, sig2, x, e, lmax) / z, vj = m->var0[j] + sig2;
      sc += r * ((m->mu[j * m->d + c] - x[c]) / vj);
    }
    sv += sc * v[c];
  }
  for (int c = 0; c < m->d; c++) out[c] = 0.0f;
  for (int j = 0; j < m->k; j++) {
    float r = df_mixture_e(m, j, sig2, x, e, lmax) / z, vj = m->var0[j] + sig2;
    float sjv = 0.0f;
    for (int c = 0; c < m->d; c++) sjv += ((m->mu[j * m->d + c] - x[c]) / vj) * v[c];
    for (int c = 0; c < m->d; c++)
      out[c] += r * (-v[c] / vj + ((m->mu[j * m->d + c] - x[c]) / vj) * (sjv - sv));
  }
}

DF_FN float df_mixture_logpdf_row(const df_mixture *m, float sig2, const float *x)
{
  float e[DF_MIX_CACHE], lmax;
  const float z = df_mixture_lse(m, sig2, x, e, &lmax);
  return lmax + df_logf(z) - 0.918938533204672742f * (float)m->d; /* log(2 pi) / 2 */
}

/* one draw of row i at sigma^2 = sig2: the component from a uniform u, then mean + sd * z */
DF_FN void df_mixture_sample_row(const df_mixture *m, float sig2, float u, const float *z,
                                 float *out)
{
  int j = 0;
  float acc = df_expf(m->logw[0]);
  while (j + 1 < m->k && u >= acc) acc += df_expf(m->logw[++j]);
  float sd = sqrtf(m->var0[j] + sig2);
  for (int c = 0; c < m->d; c++) out[c] = m->mu[j * m->d + c] + sd * z[c];
}

/* ---- reverse-time update rules (t runs from 1 to 0 in steps of dt) -------------------------- */

enum { DF_EULER, DF_EULER_MARUYAMA, DF_HEUN, DF_DDIM, DF_DPMPP_2M, DF_EDM, DF_PC, DF_RK45, DF_RK4 };

/* probability-flow ODE, Euler: x + 0.5 g^2 s dt, with c = 0.5 g^2 dt */
DF_FN float df_step_euler(float x, float s, float c) { return x + c * s; }
/* reverse SDE, Euler-Maruyama: x + g^2 s dt + g sqrt(dt) z, with c1 = g^2 dt, c2 = g sqrt(dt) */
DF_FN float df_step_em(float x, float s, float c1, float c2, float z) { return (x + c1 * s) + c2 * z; }
/* Heun's corrector: x + (dt/2) (0.5 g_k^2 s + 0.5 g_{k+1}^2 s'), with c1 = 0.5 g_k^2 dt and
   c2 = 0.5 g_{k+1}^2 dt (the predictor is df_step_euler with c1) */
DF_FN float df_step_heun(float x, float s, float s2, float c1, float c2)
{
  return x + 0.5f * (c1 * s + c2 * s2);
}

/* the Gaussian of element i (of n) at step k of a reverse-SDE run: normal number k * n + i of the
   run's stream, so the noise is the same for the fused and the step-by-step paths, and the four
   elements of one Philox block are neighbours within a step */
DF_FN uint64_t df_noise_index(uint64_t i, uint64_t k, uint64_t n) { return k * n + i; }

/* ---- network pieces: activations, Fourier features, Adam ------------------------------------ */

enum { DF_ACT_SILU, DF_ACT_RELU, DF_ACT_TANH, DF_ACT_GELU };

/* h = act(z); *aux keeps what the derivative needs (sigmoid(z), tanh(z) or tanh(u)) */
DF_FN float df_act_fwd(int act, float z, float *aux)
{
  switch (act) {
  case DF_ACT_RELU: *aux = 0.0f; return df_reluf(z);
  case DF_ACT_TANH: *aux = df_tanhf(z); return *aux;
  case DF_ACT_GELU: {
    float th = df_tanhf(0.797884560802865356f * (z + 0.044715f * z * z * z));
    *aux = th;
    return 0.5f * z * (1.0f + th);
  }
  default: *aux = df_sigmoid_nonan(z); return z * *aux; /* silu (NaN: see df_sigmoid_nonan) */
  }
}

/* d act / dz at z, from the aux value df_act_fwd left */
DF_FN float df_act_bwd(int act, float z, float aux)
{
  switch (act) {
  case DF_ACT_RELU: return z > 0.0f ? 1.0f : 0.0f;
  case DF_ACT_TANH: return 1.0f - aux * aux;
  case DF_ACT_GELU:
    return 0.5f * (1.0f + aux) + 0.5f * z * (1.0f - aux * aux) * 0.797884560802865356f *
           (1.0f + 3.0f * 0.044715f * z * z);
  default: return aux * (1.0f + z * (1.0f - aux)); /* silu: s (1 + z (1 - s)) */
  }
}

/* sin and cos of x reduced in float with pi/2 in three parts (products exact for |k| < 2^12):
   within 1.5 ulp for |x| < 6e4, 1.8 below 1e5, 10 below 1e6 (sampled), which the Fourier
   features' arguments stay far below; twice as fast as df_sincosf's reduction in double.
   Past 2^22 pi/2 ~ 6.6e6 k = x 2/pi no longer rounds exactly (the error was thousands of ulps
   there): NaN from 6.5e6 on, and for NaN and infinite x. r is not clamped (a clamp costs the
   features 7%); below 6.5e6 |r| <= pi/4 plus rounding. */
DF_FN void df_sincosf_short(float x, float *sinx, float *cosx)
{
  const float C1 = 1.5703125f, C2 = 4.837512969970703e-4f, C3 = 7.549790126404332e-8f;
  /* k = x 2/pi rounded to an integer by adding ROUND (1.5 2^23): for |k| < 2^22 the sum's low
     mantissa bits are k + 2^22, so they give q = k mod 4 without a conversion to int (which
     NaN or a float past the int range would make undefined in C) */
  float kr = df_fmaf(x, 0.636619772367581343f, DF_ROUND), kf = kr - DF_ROUND;
  float r = df_fmaf(-kf, C3, df_fmaf(-kf, C2, df_fmaf(-kf, C1, x)));
  float sv, cv;
  df_sincos_quadrant(df_to_bits(kr), r, &sv, &cv);
  int bad = !(fabsf(x) < 6.5e6f);
  *sinx = bad ? NAN : sv;
  *cosx = bad ? NAN : cv;
}

/* Gaussian Fourier features of t: [sin(2 pi t W_j)] for j < half, then [cos(2 pi t W_j)];
   the argument is rounded as torch rounds (t W) * 2 pi in float32 */
DF_FN void df_fourier(float t, float w, float *s, float *c)
{
  df_sincosf_short((t * w) * 6.28318530717958648f, s, c);
}

/* one Adam update of one parameter, in torch's order of operations (torch.optim.Adam with
   L2 weight decay): g += wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
   p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps) */
DF_FN float df_adam_update(float p, float g, float *m, float *v, float b1, float b2, float step,
                           float sqrt_bc2, float eps, float wd)
{
  g = g + wd * p;
  *m = *m * b1 + g * (1.0f - b1);
  *v = *v * b2 + (g * g) * (1.0f - b2);
  return p + (-step) * (*m / (sqrtf(*v) / sqrt_bc2 + eps));
}

/* what a network's output means (net.output): the score is out / sigma(t) ('scaled', the
   seed's), out ('score'), -out / sigma ('noise') or (out - x) / sigma^2 ('denoiser') */
enum { DF_OUT_SCALED, DF_OUT_SCORE, DF_OUT_NOISE, DF_OUT_DENOISER, DF_NOUT };
/* the DSM loss's weighting lambda(t) of |s_net - s_target|^2: sigma^2 (the seed's), g^2
   ('likelihood', score_sde's likelihood weighting), 1 ('none') */
enum { DF_W_SIGMA2, DF_W_LIKELIHOOD, DF_W_NONE, DF_NWEIGHT };

/* The DSM loss of one element, x_t = x0 + sigma eta, s_target = -eta / sigma, is
   lambda |s_net - s_target|^2 = w r^2 with the residual r = sigma (s_net - s_target) and
   w = lambda / sigma^2. Per output convention, r and dr / d out: */
DF_FN float df_dsm_residual(int output, float out, float eta, float sigma, float x0)
{
  switch (output) {
  case DF_OUT_SCORE: return sigma * out + eta;
  case DF_OUT_NOISE: return eta - out;
  case DF_OUT_DENOISER: return (out - x0) / sigma; /* sigma s_net + eta = (out - x0) / sigma */
  default: return out + eta;                      /* the seed's (sigma s_net = out) */
  }
}
DF_FN float df_dsm_dres(int output, float sigma)
{
  return output == DF_OUT_SCORE ? sigma : output == DF_OUT_NOISE ? -1.0f
       : output == DF_OUT_DENOISER ? 1.0f / sigma : 1.0f;
}
/* w = lambda / sigma^2 from sigma^2 and g^2 at the row's time (1 for the seed's weighting, so
   its loss and gradient are bitwise those of the unweighted residuals) */
DF_FN float df_dsm_weight(int weighting, float sig2, float g2)
{
  return weighting == DF_W_LIKELIHOOD ? g2 / sig2 : weighting == DF_W_NONE ? 1.0f / sig2 : 1.0f;
}

/* one step of the weights' exponential moving average */
DF_FN float df_ema_update(float e, float p, float decay) { return e * decay + p * (1.0f - decay); }

/* a DSM time from a uniform u of the time stream: t = tol + (1 - tol) u */
DF_FN float df_dsm_time(float u, float tol) { return tol + (1.0f - tol) * u; }

/* row r of a batch drawn with replacement from n rows: block r of the index stream, 64 bits */
DF_FN int64_t df_rand_index(uint64_t seed, uint64_t stream, uint64_t r, int64_t n)
{
  uint32_t w[4];
  df_philox_block(seed, stream, r, w);
  return (int64_t)((((uint64_t)w[0] << 32) | w[1]) % (uint64_t)n);
}

#endif
