/* group.c: U(1) and SU(N) on eigenangles (N = 2, 3): canonical form, Haar, the heat kernel at
 * the identity in its wrapped and character forms, class functions through their character
 * expansion, exact draws by rejection, and the group score sources. Per row, in double, on the
 * host. The formulas (../shared/groups.md) share one shape: K = Num / D with the Weyl
 * denominator D = prod_{i<j} 2 sin(theta_ij / 2), so the log, the projected score and the
 * divergence come from Num, its gradient and its Laplacian, and D's, in closed form. */
#include "group.h"
#include "dmath.h"
#include "status.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#define TWO_PI 6.283185307179586476925
#define PI 3.141592653589793238463

struct reps;
static int heat_reps(const df_group *G, const struct reps **out);

int df_group_make(df_group *G, int kind, int n)
{
  if (kind == DF_GROUP_U1) n = 1;
  else if (kind != DF_GROUP_SU || n < 2 || n > DF_GROUP_MAXN)
    return df_fail(DF_EARG, "SU(N) is supported for N = 2 and 3 (got N = %d)", n);
  G->kind = kind;
  G->n = n;
  const struct reps *R;
  return heat_reps(G, &R); /* (the tables are built here, never inside a parallel loop) */
}

const char *df_group_name(const df_group *G, char *buf, int len)
{
  if (G->kind == DF_GROUP_U1) snprintf(buf, (size_t)len, "U(1)");
  else snprintf(buf, (size_t)len, "SU(%d)", G->n);
  return buf;
}

/* measured (examples/group_forms.lua): both forms agree to 1e-13 in log K and 1e-12 in the
   score from w = 0.9 to 2.5; below 0.6 the character sum cancels catastrophically, above 3 the
   lattice sum needs many shifts; the switch sits where both are cheap */
double df_group_switch_width(const df_group *G)
{
  return G->kind == DF_GROUP_U1 ? 1.2 : 1.5;
}

/* ---- the permutations of N (Weyl group), with signs ----------------------------------------- */

static const int PERM2[2][2] = { { 0, 1 }, { 1, 0 } };
static const int SIGN2[2] = { 1, -1 };
static const int PERM3[6][3] = { { 0, 1, 2 }, { 1, 2, 0 }, { 2, 0, 1 }, { 0, 2, 1 }, { 2, 1, 0 }, { 1, 0, 2 } };
static const int SIGN3[6] = { 1, 1, 1, -1, -1, -1 };

static int nperm(int n) { return n == 1 ? 1 : n == 2 ? 2 : 6; }
static int perm_at(int n, int w, int j) { return n == 1 ? 0 : n == 2 ? PERM2[w][j] : PERM3[w][j]; }
static int perm_sign(int n, int w) { return n == 1 ? 1 : n == 2 ? SIGN2[w] : SIGN3[w]; }

/* ---- rows ------------------------------------------------------------------------------------ */

static double wrap_angle(double x) /* into (-pi, pi] */
{
  return x - TWO_PI * ceil((x - PI) / TWO_PI);
}

void df_group_canon_row(const df_group *G, double *th)
{
  const int n = G->n;
  double s = 0.0;
  for (int i = 0; i < n; i++) s += (th[i] = wrap_angle(th[i]));
  if (G->kind == DF_GROUP_U1) return;
  int m = (int)lround(s / TWO_PI);
  /* subtract 2 pi from the m largest (m > 0) or add it to the |m| smallest */
  while (m != 0) {
    int k = 0;
    for (int i = 1; i < n; i++)
      if (m > 0 ? th[i] > th[k] : th[i] < th[k]) k = i;
    th[k] += m > 0 ? -TWO_PI : TWO_PI;
    m += m > 0 ? -1 : 1;
  }
  s = 0.0;
  for (int i = 0; i < n - 1; i++) s += th[i];
  th[n - 1] = -s; /* the sum exactly 0 */
}

/* the Weyl denominator's pieces: log |D|, grad log D (projected already) and
   -tr(P Hess log D) = (1/2) sum_{i<j} csc^2(theta_ij / 2) */
static void denom(int n, const double *th, double *logd, double *g, double *lap, double *sign)
{
  *logd = 0.0;
  *sign = 1.0;
  *lap = 0.0;
  for (int i = 0; i < n; i++) g[i] = 0.0;
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) {
      double h = 0.5 * (th[i] - th[j]), s = sin(h), c = cos(h);
      *logd += log(fabs(2.0 * s));
      if (s < 0.0) *sign = -*sign;
      double ct = 0.5 * c / s;
      g[i] += ct;
      g[j] -= ct;
      *lap += 0.5 / (s * s);
    }
}

double df_group_haar_logh_row(const df_group *G, const double *th)
{
  const int n = G->n;
  if (G->kind == DF_GROUP_U1) return -log(TWO_PI);
  double j2 = 0.0;
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) j2 += 2.0 * log(fabs(2.0 * sin(0.5 * (th[i] - th[j]))));
  double fact = n == 2 ? 2.0 : 6.0;
  return j2 - log(fact) - (n - 1) * log(TWO_PI);
}

/* the distance to the nearest wall theta_i = theta_j (mod 2 pi), as min |sin(theta_ij / 2)| */
static double wall_gap(int n, const double *th)
{
  double m = 1.0;
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) m = fmin(m, fabs(sin(0.5 * (th[i] - th[j]))));
  return m;
}

/* on (or within delta of) a wall Num and D vanish together; move the point off by delta times
   its centred ranks (every gap grows by a multiple of delta; K is even across a wall, so this
   changes it by O((delta / w)^2) = 1e-8, while Num / D keeps ~1e-8 of precision at a centre
   element, where three terms of size delta cancel to delta^3) */
static void off_walls(int n, double *th, double w)
{
  const double delta = 1e-4 * fmin(w, 1.0);
  if (wall_gap(n, th) >= delta) return;
  double r[DF_GROUP_MAXN];
  for (int i = 0; i < n; i++) {
    int rank = 0;
    for (int j = 0; j < n; j++)
      if (th[j] < th[i] || (th[j] == th[i] && j < i)) rank++;
    r[i] = rank - 0.5 * (n - 1);
  }
  for (int i = 0; i < n; i++) th[i] += delta * r[i];
}

static void project(int n, double *v)
{
  double m = 0.0;
  for (int i = 0; i < n; i++) m += v[i];
  m /= n;
  for (int i = 0; i < n; i++) v[i] -= m;
}

/* Num / D -> log, projected score, divergence; num, gnum (projected) and lapnum = tr(P Hess Num)
   of the numerator, all scaled by the same positive factor */
static void finish(int su, int n, const double *th, double num, const double *gnum, double lapnum,
                   double logscale, double *logk, double *score, double *div)
{
  double logd = 0.0, gd[DF_GROUP_MAXN] = { 0 }, lapd = 0.0, sign = 1.0;
  if (su) denom(n, th, &logd, gd, &lapd, &sign);
  *logk = logscale + log(fabs(num)) - logd;
  if (num * sign <= 0.0) *logk = num == 0.0 ? -INFINITY : NAN; /* (num / D must be positive) */
  double s2 = 0.0;
  for (int i = 0; i < n; i++) {
    double gi = gnum[i] / num;
    s2 += gi * gi;
    if (score) score[i] = gi - gd[i];
  }
  if (div) *div = lapnum / num - s2 + lapd;
}

/* ---- the character (alternant) sums -------------------------------------------------------- */

/* a list of irreps: l = mu + rho (n entries, l_n = 0 for SU(N); U(1): l = k >= 0), the Casimir
   C = (|P l|^2 - |P rho|^2) / 2, and the alternant coefficient c (complex) at t = 0; the terms
   are sorted by C, and a sum stops where C w^2 > cut + 2 log(bound) with bound >= |c| d */
typedef struct reps {
  int n, nrep, lmax;
  int *l;
  double *cas, *cre, *cim;
  double lbound; /* log of the largest |c| d in the list */
} reps;

/* sum_mu sum_w sgn(w) Re(c_mu e^{-C_mu w^2} e^{i <w l, theta>}): value, gradient, tr(P Hess) */
static void alt_sum(const reps *R, int su, const double *th, double w, double *num, double *g,
                    double *lap)
{
  const int n = R->n, np = nperm(n);
  enum { LM = 512 };
  double cs[DF_GROUP_MAXN][LM + 1], sn[DF_GROUP_MAXN][LM + 1];
  const double w2 = w * w, cut = 44.0 + 2.0 * R->lbound;
  /* the terms this width needs (sorted by C), and the largest frequency among them */
  int rend = 0, lmax = 0;
  for (; rend < R->nrep && R->cas[rend] * w2 <= cut; rend++)
    if (R->l[(size_t)rend * n] > lmax) lmax = R->l[(size_t)rend * n];
  if (lmax > LM) lmax = LM;
  /* cos k theta, sin k theta by the angle-addition recurrence (error ~ k ulp) */
  for (int j = 0; j < n; j++) {
    const double c1 = cos(th[j]), s1 = sin(th[j]);
    cs[j][0] = 1.0;
    sn[j][0] = 0.0;
    for (int k = 1; k <= lmax; k++) {
      cs[j][k] = cs[j][k - 1] * c1 - sn[j][k - 1] * s1;
      sn[j][k] = sn[j][k - 1] * c1 + cs[j][k - 1] * s1;
    }
  }
  *num = 0.0;
  *lap = 0.0;
  for (int j = 0; j < n; j++) g[j] = 0.0;
  for (int r = 0; r < rend; r++) {
    const double e = R->cas[r] * w2;
    const int *l = R->l + (size_t)r * n;
    if (l[0] > lmax) continue;
    const double f = exp(-e), br = R->cre[r] * f, bi = R->cim[r] * f;
    double pl2 = 0.0, lm = 0.0; /* |P l|^2 */
    for (int j = 0; j < n; j++) lm += l[j];
    lm = su ? lm / n : 0.0;
    for (int j = 0; j < n; j++) pl2 += (l[j] - lm) * (l[j] - lm);
    if (n == 3 && l[2] == 0) { /* SU(3): each of the six phases is a product of two powers */
      const int a = l[0], b = l[1];
      /* exponents of (z0, z1, z2) per permutation, in PERM3's order and signs */
      const int ex[6][3] = { { a, b, 0 }, { b, 0, a }, { 0, a, b }, { a, 0, b }, { 0, b, a }, { b, a, 0 } };
      for (int p = 0; p < 6; p++) {
        const int *x = ex[p];
        const int u = x[0] ? 0 : 1, v = x[2] ? 2 : 1; /* the two nonzero exponents' angles */
        const int ku = x[u], kv = x[v];
        const double re = cs[u][ku] * cs[v][kv] - sn[u][ku] * sn[v][kv];
        const double im = cs[u][ku] * sn[v][kv] + sn[u][ku] * cs[v][kv];
        const double sg = p < 3 ? 1.0 : -1.0;
        const double term = sg * (br * re - bi * im), dterm = sg * (-br * im - bi * re);
        *num += term;
        *lap -= pl2 * term;
        g[0] += dterm * x[0];
        g[1] += dterm * x[1];
        g[2] += dterm * x[2];
      }
      continue;
    }
    for (int p = 0; p < np; p++) {
      double re = 1.0, im = 0.0; /* e^{i phi}, phi = sum_j l_{w(j)} theta_j */
      for (int j = 0; j < n; j++) {
        int k = l[perm_at(n, p, j)];
        double a = cs[j][k], b = sn[j][k], t = re * a - im * b;
        im = re * b + im * a;
        re = t;
      }
      const double sg = perm_sign(n, p);
      const double term = sg * (br * re - bi * im), dterm = sg * (-br * im - bi * re);
      *num += term;
      *lap -= pl2 * term;
      for (int j = 0; j < n; j++) g[j] += dterm * l[perm_at(n, p, j)];
    }
  }
  if (su) project(n, g);
}

static int cmp_cas(const void *a, const void *b, const double *cas)
{
  double x = cas[*(const int *)a], y = cas[*(const int *)b];
  return x < y ? -1 : x > y;
}
static const double *sort_cas; /* (qsort has no context argument in C99; used single-threaded) */
static int cmp_idx(const void *a, const void *b) { return cmp_cas(a, b, sort_cas); }

static void reps_free(reps *R)
{
  free(R->l);
  free(R->cas);
  free(R->cre);
  free(R->cim);
  memset(R, 0, sizeof *R);
}

/* the irreps of U(1) (k = 0..kmax) or SU(N) (l_1 <= kmax), Casimirs and dimensions; the
   coefficients are left to the caller (cre, cim sized) */
static int reps_alloc(reps *R, const df_group *G, int kmax, double *dim)
{
  const int n = G->n;
  int cnt = 0;
  if (n == 1) cnt = kmax + 1;
  else if (n == 2) cnt = kmax;
  else cnt = kmax * (kmax - 1) / 2; /* l = (a, b, 0), kmax >= a > b > 0 */
  memset(R, 0, sizeof *R);
  R->n = n;
  R->nrep = cnt;
  R->lmax = kmax;
  R->l = (int *)malloc((size_t)cnt * n * sizeof(int));
  R->cas = (double *)malloc((size_t)cnt * sizeof(double));
  R->cre = (double *)calloc((size_t)cnt, sizeof(double));
  R->cim = (double *)calloc((size_t)cnt, sizeof(double));
  if (!R->l || !R->cas || !R->cre || !R->cim) {
    reps_free(R);
    return df_fail(DF_ENOMEM, "out of memory");
  }
  int r = 0;
  if (n == 1)
    for (int k = 0; k <= kmax; k++, r++) {
      R->l[r] = k;
      R->cas[r] = 0.5 * k * k;
      dim[r] = 1.0;
    }
  else if (n == 2)
    for (int m = 1; m <= kmax; m++, r++) {
      R->l[2 * r] = m;
      R->l[2 * r + 1] = 0;
      R->cas[r] = 0.25 * (m * (double)m - 1.0);
      dim[r] = m;
    }
  else
    for (int a = 2; a <= kmax; a++)
      for (int b = 1; b < a; b++, r++) {
        int p = a - b - 1, q = b - 1; /* mu = (p + q, q, 0) */
        R->l[3 * r] = a;
        R->l[3 * r + 1] = b;
        R->l[3 * r + 2] = 0;
        R->cas[r] = (p * (double)p + q * (double)q + p * (double)q + 3.0 * p + 3.0 * q) / 3.0;
        dim[r] = 0.5 * (p + 1.0) * (q + 1.0) * (p + q + 2.0);
      }
  return DF_OK;
}

/* SU(3): a real class function's terms come in conjugate pairs mu = (p+q, q), mu* = (p+q, p)
   (l = (l1, l2, 0) and (l1, l1 - l2, 0)) whose contributions are equal (a_mu* chi_mu* is the
   conjugate of a_mu chi_mu, and the sum takes real parts): keep one of each, doubled */
static void reps_fold_conjugates(reps *R)
{
  if (R->n != 3) return;
  int keep = 0;
  for (int r = 0; r < R->nrep; r++) {
    const int l1 = R->l[3 * r], l2 = R->l[3 * r + 1];
    if (2 * l2 > l1) continue;
    const double f = 2 * l2 < l1 ? 2.0 : 1.0;
    memmove(R->l + (size_t)keep * 3, R->l + (size_t)r * 3, 3 * sizeof(int));
    R->cas[keep] = R->cas[r];
    R->cre[keep] = f * R->cre[r];
    R->cim[keep] = f * R->cim[r];
    keep++;
  }
  R->nrep = keep;
}

/* put the terms in order of C (the sums stop early) */
static int reps_sort(reps *R)
{
  const int n = R->n, cnt = R->nrep;
  int *idx = (int *)malloc((size_t)cnt * sizeof(int));
  reps T = *R;
  T.l = (int *)malloc((size_t)cnt * n * sizeof(int));
  T.cas = (double *)malloc((size_t)cnt * sizeof(double));
  T.cre = (double *)malloc((size_t)cnt * sizeof(double));
  T.cim = (double *)malloc((size_t)cnt * sizeof(double));
  if (!idx || !T.l || !T.cas || !T.cre || !T.cim) {
    free(idx);
    reps_free(&T);
    return df_fail(DF_ENOMEM, "out of memory");
  }
  for (int i = 0; i < cnt; i++) idx[i] = i;
  sort_cas = R->cas;
  qsort(idx, (size_t)cnt, sizeof(int), cmp_idx);
  for (int i = 0; i < cnt; i++) {
    int s = idx[i];
    memcpy(T.l + (size_t)i * n, R->l + (size_t)s * n, (size_t)n * sizeof(int));
    T.cas[i] = R->cas[s];
    T.cre[i] = R->cre[s];
    T.cim[i] = R->cim[s];
  }
  free(idx);
  reps_free(R);
  *R = T;
  return DF_OK;
}

/* the heat kernel's own expansion: c = d (times the phase that makes Num / D real: (-i)^m with
   m = N(N-1)/2 pairs); U(1): 1 + 2 sum cos */
static reps HEAT[DF_GROUP_MAXN + 1];
static int heat_reps(const df_group *G, const reps **out)
{
  const int n = G->n;
  reps *R = &HEAT[n];
  if (R->nrep) {
    *out = R;
    return DF_OK;
  }
  const int kmax = n == 1 ? 4000 : n == 2 ? 400 : 120;
  double *dim = (double *)malloc(sizeof(double) * (size_t)(kmax + 1) * (size_t)kmax);
  if (!dim) return df_fail(DF_ENOMEM, "out of memory");
  int st = reps_alloc(R, G, kmax, dim);
  if (st) {
    free(dim);
    return st;
  }
  double dmax = 1.0;
  for (int r = 0; r < R->nrep; r++) {
    double d = dim[r];
    if (n == 1) R->cre[r] = R->l[r] == 0 ? 1.0 : 2.0;
    else if (n == 2) R->cim[r] = -d; /* (-i) d */
    else R->cim[r] = d;              /* (-i)^3 d = i d */
    if (d * d > dmax) dmax = d * d;
  }
  free(dim);
  R->lbound = log(2.0 * dmax);
  reps_fold_conjugates(R);
  st = reps_sort(R);
  if (!st) *out = R;
  return st;
}

/* ---- the heat kernel ------------------------------------------------------------------------ */

static double log_cw(const df_group *G, double w) /* log c_N(w) of K = c_N K_wrapped */
{
  const int n = G->n;
  if (n == 1) return 0.5 * log(TWO_PI) - log(w);
  const double dim = n * n - 1.0, rho2 = n * (n * n - 1.0) / 24.0;
  const double logvol = n == 2 ? log(2.0 * sqrt(PI)) + 1.5 * log(TWO_PI) : log(sqrt(3.0) * PI) + 4.0 * log(TWO_PI);
  return logvol - 0.5 * dim * log(TWO_PI * w * w) + rho2 * w * w;
}

/* the lattice shifts x = theta + 2 pi (n_1, .., n_{N-1}, -sum n) that matter: |n| <= R with
   2 pi R = |theta| + sqrt(|theta|^2 + 100 w^2) (the rest weigh under e^-50 of the n = 0 term) */
static int shift_radius(int n, const double *th, double w)
{
  double t2 = 0.0;
  for (int i = 0; i < n; i++) t2 += th[i] * th[i];
  double t = sqrt(t2);
  return (int)ceil((t + sqrt(t2 + 100.0 * w * w)) / TWO_PI);
}

/* one shift's x, Gaussian exponent, L = prod x_ij and grad L (without dividing by x_ij) */
static double shift_terms(int n, const double *th, const int *nv, double w, double *x, double *L,
                          double *gL)
{
  double s = 0.0, x2 = 0.0;
  for (int i = 0; i < n - 1; i++) {
    x[i] = th[i] + TWO_PI * nv[i];
    s += nv[i];
  }
  x[n - 1] = th[n - 1] - TWO_PI * s;
  if (n == 1) x[0] = th[0] + TWO_PI * nv[0];
  for (int i = 0; i < n; i++) x2 += x[i] * x[i];
  for (int i = 0; i < n; i++) gL[i] = 0.0;
  if (n == 1) *L = 1.0;
  else if (n == 2) {
    *L = x[0] - x[1];
    gL[0] = 1.0;
    gL[1] = -1.0;
  } else {
    double a = x[0] - x[1], b = x[0] - x[2], c = x[1] - x[2]; /* L = a b c */
    *L = a * b * c;
    /* d/dx0 = b c + a c, d/dx1 = -b c + a b, d/dx2 = -a c - a b */
    gL[0] = b * c + a * c;
    gL[1] = -b * c + a * b;
    gL[2] = -a * c - a * b;
  }
  return -x2 / (2.0 * w * w);
}

static void heat_wrapped(const df_group *G, const double *th, double w, double *logk, double *score,
                         double *div)
{
  const int n = G->n, su = G->kind == DF_GROUP_SU, nd = su ? n - 1 : 1;
  const int R = shift_radius(n, th, w);
  const double dim = su ? n * n - 1.0 : 1.0, w2 = w * w;
  int nv[2] = { 0, 0 };
  double x[DF_GROUP_MAXN], gL[DF_GROUP_MAXN], L;
  double emax = -INFINITY;
  for (nv[0] = -R; nv[0] <= R; nv[0]++)
    for (nv[1] = nd > 1 ? -R : 0; nv[1] <= (nd > 1 ? R : 0); nv[1]++) {
      if (nv[0] * nv[0] + nv[1] * nv[1] > R * R) continue;
      double e = shift_terms(n, th, nv, w, x, &L, gL);
      if (e > emax) emax = e;
    }
  double num = 0.0, g[DF_GROUP_MAXN] = { 0 }, lap = 0.0;
  for (nv[0] = -R; nv[0] <= R; nv[0]++)
    for (nv[1] = nd > 1 ? -R : 0; nv[1] <= (nd > 1 ? R : 0); nv[1]++) {
      if (nv[0] * nv[0] + nv[1] * nv[1] > R * R) continue;
      double e = shift_terms(n, th, nv, w, x, &L, gL) - emax;
      if (e < -60.0) continue;
      double f = exp(e), x2 = 0.0;
      for (int i = 0; i < n; i++) {
        g[i] += f * (gL[i] - L * x[i] / w2);
        x2 += x[i] * x[i];
      }
      num += f * L;
      /* tr P Hess (L G) = G L (|x|^2 / w^4 - (N^2 - 1) / w^2): L is harmonic and of degree m */
      lap += f * L * (x2 / (w2 * w2) - dim / w2);
    }
  if (su) project(n, g);
  finish(su, n, th, num, g, lap, log_cw(G, w) + emax, logk, score, div);
}

static void heat_character(const df_group *G, const double *th, double w, double *logk,
                           double *score, double *div)
{
  const reps *R = NULL;
  if (heat_reps(G, &R)) { /* (only out of memory) */
    *logk = NAN;
    return;
  }
  double num, g[DF_GROUP_MAXN], lap;
  const int su = G->kind == DF_GROUP_SU;
  alt_sum(R, su, th, w, &num, g, &lap);
  finish(su, G->n, th, num, g, lap, 0.0, logk, score, div);
}

void df_group_heat_row(const df_group *G, const double *theta, double w, int form, double *logk,
                       double *score, double *div)
{
  double th[DF_GROUP_MAXN];
  memcpy(th, theta, (size_t)G->n * sizeof(double));
  df_group_canon_row(G, th);
  const int su = G->kind == DF_GROUP_SU;
  if (form == DF_FORM_AUTO) {
    form = w < df_group_switch_width(G) ? DF_FORM_WRAPPED : DF_FORM_CHARACTER;
    /* near a wall the character sum cancels to D's order (delta^3 at a triple point): the
       lattice sum keeps the identity's term an exact product there; past w = 8 K = 1 to 1e-20 */
    if (su && form == DF_FORM_CHARACTER && wall_gap(G->n, th) < 1e-3) {
      if (w >= 8.0) {
        *logk = 0.0;
        for (int i = 0; score && i < G->n; i++) score[i] = 0.0;
        if (div) *div = 0.0;
        return;
      }
      form = DF_FORM_WRAPPED;
    }
  }
  if (su) off_walls(G->n, th, w);
  if (form == DF_FORM_WRAPPED) heat_wrapped(G, th, w, logk, score, div);
  else heat_character(G, th, w, logk, score, div);
}

/* ---- class functions ------------------------------------------------------------------------ */

double df_action_row(const df_group *G, double beta, const double *coef, int ncoef, const double *th)
{
  double s = 0.0;
  for (int k = 1; k <= ncoef; k++)
    for (int j = 0; j < G->n; j++) s += coef[k - 1] * cos(k * th[j]);
  return -(beta / G->n) * s;
}

void df_class_free(df_class_fn *cf)
{
  free(cf->l);
  free(cf->cas);
  free(cf->cre);
  free(cf->cim);
  memset(cf, 0, sizeof *cf);
}

/* the Weyl denominator D at a point (0 for U(1): there is none, D = 1) */
static double weyl_d(int n, const double *th)
{
  double d = 1.0;
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) d *= 2.0 * sin(0.5 * (th[i] - th[j]));
  return d;
}

/* c_mu = mean over the torus of p0 D e^{-i <l, theta>} (trapezoid rule: exponentially accurate
   for a smooth periodic integrand); with the phase of A_rho folded in, Num = sum_mu sum_w sgn
   Re(c e^{-C w^2} e^{i <w l, theta>}) is p_t D */
int df_class_from_action(df_class_fn *cf, const df_group *G, double beta, const double *coef, int ncoef)
{
  const int n = G->n;
  const int kmax = n == 3 ? 96 : 400, M = n == 3 ? 256 : 1024;
  memset(cf, 0, sizeof *cf);
  cf->G = *G;
  double *dim = (double *)malloc(sizeof(double) * (size_t)(kmax + 1) * (size_t)kmax);
  double *f = (double *)malloc(sizeof(double) * (n == 3 ? (size_t)M * M : (size_t)M));
  reps R;
  int st = DF_OK;
  if (!dim || !f) {
    free(dim);
    free(f);
    return df_fail(DF_ENOMEM, "out of memory");
  }
  if ((st = reps_alloc(&R, G, kmax, dim))) goto done;
  /* f = exp(-S - smax) D on the grid; Z = mean(exp(-S) J^2) / N! */
  double smax = -INFINITY, zsum = 0.0, th[DF_GROUP_MAXN];
  const int npts = n == 3 ? M * M : M;
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < npts; i++) {
      th[0] = -PI + TWO_PI * (n == 3 ? i / M : i) / M;
      if (n == 2) th[1] = -th[0];
      if (n == 3) {
        th[1] = -PI + TWO_PI * (i % M) / M;
        th[2] = -th[0] - th[1];
      }
      double a = -df_action_row(G, beta, coef, ncoef, th);
      if (pass == 0) {
        if (a > smax) smax = a;
        continue;
      }
      double d = n == 1 ? 1.0 : weyl_d(n, th), e = exp(a - smax);
      f[i] = e * d;
      zsum += e * d * d;
    }
  double fact = n == 1 ? 1.0 : n == 2 ? 2.0 : 6.0, z = zsum / npts / fact;
  cf->log_z = log(z) + smax;
  const double norm = 1.0 / (z * npts);
  if (n < 3) {
    for (int r = 0; r < R.nrep; r++) {
      int k = R.l[r * n] - (n == 2 ? R.l[r * n + 1] : 0);
      double re = 0.0, im = 0.0;
      for (int i = 0; i < M; i++) {
        double a = k * (-PI + TWO_PI * i / M);
        re += f[i] * cos(a);
        im -= f[i] * sin(a);
      }
      double dbl = (n == 1 && k > 0) ? 2.0 : 1.0; /* U(1): k and -k together */
      R.cre[r] = dbl * re * norm;
      R.cim[r] = dbl * im * norm;
    }
  } else {
    /* separable: first along theta_2 for every theta_1 row, then along theta_1 */
    double *gr = (double *)malloc(sizeof(double) * (size_t)M * (kmax + 1) * 2);
    if (!gr) {
      st = df_fail(DF_ENOMEM, "out of memory");
      goto done;
    }
    for (int i = 0; i < M; i++)
      for (int k = 0; k <= kmax; k++) {
        double re = 0.0, im = 0.0;
        for (int j = 0; j < M; j++) {
          double a = k * (-PI + TWO_PI * j / M);
          re += f[(size_t)i * M + j] * cos(a);
          im -= f[(size_t)i * M + j] * sin(a);
        }
        gr[((size_t)i * (kmax + 1) + k) * 2] = re;
        gr[((size_t)i * (kmax + 1) + k) * 2 + 1] = im;
      }
    for (int r = 0; r < R.nrep; r++) {
      int k1 = R.l[3 * r], k2 = R.l[3 * r + 1];
      double re = 0.0, im = 0.0;
      for (int i = 0; i < M; i++) {
        double a = k1 * (-PI + TWO_PI * i / M), c = cos(a), s = -sin(a);
        double gre = gr[((size_t)i * (kmax + 1) + k2) * 2], gim = gr[((size_t)i * (kmax + 1) + k2) * 2 + 1];
        re += gre * c - gim * s;
        im += gre * s + gim * c;
      }
      R.cre[r] = re * norm;
      R.cim[r] = im * norm;
    }
    free(gr);
  }
  /* keep the terms that matter: |c| d above 1e-15 (of a_0 = 1); the last ones must be below */
  int keep = 0, lmax = 0;
  double bmax = 1.0, tail = 0.0;
  for (int r = 0; r < R.nrep; r++) {
    double c = hypot(R.cre[r], R.cim[r]), b = c * dim[r];
    if (R.l[r * n] >= kmax - 8 && c > tail) tail = c;
    if (c < 1e-14) continue;
    if (b > bmax) bmax = b;
    memmove(R.l + (size_t)keep * n, R.l + (size_t)r * n, (size_t)n * sizeof(int));
    R.cas[keep] = R.cas[r];
    R.cre[keep] = R.cre[r];
    R.cim[keep] = R.cim[r];
    if (R.l[(size_t)keep * n] > lmax) lmax = R.l[(size_t)keep * n];
    keep++;
  }
  if (tail > 1e-13) {
    st = df_fail(DF_EARG, "the target is too sharp for its character expansion on %s (terms of "
                 "weight %.2g remain at the truncation): lower beta", n == 1 ? "U(1)" : n == 2 ? "SU(2)" : "SU(3)",
                 tail);
    reps_free(&R);
    goto done;
  }
  R.nrep = keep;
  R.lmax = lmax;
  R.lbound = log(2.0 * bmax);
  reps_fold_conjugates(&R);
  if ((st = reps_sort(&R))) goto done;
  cf->nrep = R.nrep;
  cf->lmax = R.lmax;
  cf->l = R.l;
  cf->cas = R.cas;
  cf->cre = R.cre;
  cf->cim = R.cim;
  cf->bound = R.lbound;
done:
  free(dim);
  free(f);
  return st;
}

void df_class_row(const df_class_fn *cf, const double *theta, double w, double *logp, double *score,
                  double *div)
{
  const df_group *G = &cf->G;
  double th[DF_GROUP_MAXN];
  memcpy(th, theta, (size_t)G->n * sizeof(double));
  df_group_canon_row(G, th);
  const int su = G->kind == DF_GROUP_SU;
  if (su) off_walls(G->n, th, w > 0.0 ? w : 1.0);
  reps R = { G->n, cf->nrep, cf->lmax, cf->l, cf->cas, cf->cre, cf->cim, cf->bound };
  double num, g[DF_GROUP_MAXN], lap;
  alt_sum(&R, su, th, w, &num, g, &lap);
  finish(su, G->n, th, num, g, lap, 0.0, logp, score, div);
}

/* ---- random doubles: row r reads blocks (r << 24) + k of one stream ------------------------- */

typedef struct rowrng {
  uint64_t seed, stream, block;
  uint32_t w[4];
  int used;
} rowrng;

static void rng_init(rowrng *g, uint64_t seed, uint64_t stream, int64_t row)
{
  g->seed = seed;
  g->stream = stream;
  g->block = (uint64_t)row << 24;
  g->used = 4;
}

static double rng_u(rowrng *g) /* uniform in [0, 1), 53 bits */
{
  if (g->used >= 4) {
    df_philox_block(g->seed, g->stream, g->block++, g->w);
    g->used = 0;
  }
  uint32_t a = g->w[g->used], b = g->w[g->used + 1];
  g->used += 2;
  return ((double)(a >> 5) * 67108864.0 + (double)(b >> 6)) * (1.0 / 9007199254740992.0);
}

static double rng_n(rowrng *g)
{
  double u = 1.0 - rng_u(g), v = rng_u(g);
  return sqrt(-2.0 * log(u)) * cos(TWO_PI * v);
}

/* ---- tensors -------------------------------------------------------------------------------- */

int df_group_check_points(const df_group *G, const df_tensor *theta)
{
  int st;
  if ((st = df_need_live(theta))) return st;
  if (theta->ndim != 2 || theta->shape[1] != G->n) {
    char b[64];
    return df_fail(DF_EARG, "points must be [B, %d] eigenangles, got %s", G->n,
                   df_shape_str(theta->ndim, theta->shape, b, sizeof b));
  }
  return DF_OK;
}

int df_group_check_widths(const df_tensor *w, double w0, int64_t rows)
{
  if (!w) {
    if (!(w0 > 0.0) || !isfinite(w0)) return df_fail(DF_EARG, "the width must be finite and > 0 (got %g)", w0);
    return DF_OK;
  }
  int st;
  if ((st = df_need_live(w))) return st;
  if (w->numel != rows) return df_fail(DF_EARG, "w must be a number or hold one width per row (%lld)", (long long)rows);
  double lo, hi;
  if (rows > 0 && (st = df_minmax(w, &lo, &hi))) return st;
  if (rows > 0 && (!(lo > 0.0) || !isfinite(hi))) return df_fail(DF_EARG, "widths must be finite and > 0 (got %g)", lo);
  return DF_OK;
}

/* the rows on the host in double; each must sum to a multiple of 2 pi */
static int rows_in(const df_group *G, const df_tensor *theta, double **out)
{
  const int64_t n = theta->numel;
  float *h = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  double *d = (double *)malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
  int st = DF_OK;
  if (!h || !d) st = df_fail(DF_ENOMEM, "out of memory");
  if (!st && n > 0) st = theta->be->download(theta->dev, h, df_data(theta), n);
  const int k = G->n;
  for (int64_t r = 0; !st && r < n / k; r++) {
    double s = 0.0, a = 0.0;
    for (int j = 0; j < k; j++) {
      d[r * k + j] = h[r * k + j];
      s += h[r * k + j];
      a += fabs(h[r * k + j]);
      if (!isfinite(h[r * k + j])) st = df_fail(DF_EARG, "row %lld of the points is not finite", (long long)r + 1);
    }
    double m = s - TWO_PI * nearbyint(s / TWO_PI);
    if (!st && G->kind == DF_GROUP_SU && fabs(m) > 4e-6 * (1.0 + a))
      st = df_fail(DF_EARG, "row %lld is off the group: SU(%d) eigenangles sum to 0 (mod 2 pi), "
                   "this row sums to %g", (long long)r + 1, k, s);
  }
  free(h);
  if (st) {
    free(d);
    return st;
  }
  *out = d;
  return DF_OK;
}

/* n doubles to a fresh float tensor [rows] or [rows, k] on theta's device */
/* n doubles into t's device memory as floats */
static int upload_doubles(df_tensor *t, const double *v, int64_t n)
{
  float *h = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  if (!h) return df_fail(DF_ENOMEM, "out of memory");
  for (int64_t i = 0; i < n; i++) h[i] = (float)v[i];
  int st = n > 0 ? t->be->upload(t->dev, df_data(t), h, n) : DF_OK;
  free(h);
  return st;
}

static int rows_out(df_tensor *out, const df_tensor *like, const double *v, int64_t rows, int k)
{
  int64_t shape[2] = { rows, k };
  int st = df_tensor_alloc(out, like->be, like->dev, k == 0 ? 1 : 2, shape);
  return st ? st : upload_doubles(out, v, rows * (k ? k : 1));
}

int df_group_canonical(df_tensor *out, const df_group *G, const df_tensor *theta)
{
  double *d = NULL;
  int st;
  if ((st = df_group_check_points(G, theta)) || (st = rows_in(G, theta, &d))) return st;
  const int64_t rows = theta->shape[0];
  for (int64_t r = 0; r < rows; r++) df_group_canon_row(G, d + r * G->n);
  st = rows_out(out, theta, d, rows, G->n);
  free(d);
  return st;
}

int df_group_haar_log_density(df_tensor *out, const df_group *G, const df_tensor *theta)
{
  double *d = NULL;
  int st;
  if ((st = df_group_check_points(G, theta)) || (st = rows_in(G, theta, &d))) return st;
  const int64_t rows = theta->shape[0];
  for (int64_t r = 0; r < rows; r++) d[r] = df_group_haar_logh_row(G, d + r * G->n);
  st = rows_out(out, theta, d, rows, 0);
  free(d);
  return st;
}

static int out_like(df_tensor *out, int64_t n, int k)
{
  const df_backend *be;
  int dev;
  df_current_device(&be, &dev);
  int64_t shape[2] = { n, k };
  return df_tensor_alloc(out, be, dev, 2, shape);
}

/* rejection from the uniform torus: accept with J^2 / max J^2 (4 for SU(2), 27 for SU(3)) */
static void haar_row(const df_group *G, rowrng *g, double *th)
{
  const int n = G->n;
  const double jmax = n == 2 ? 4.0 : 27.0;
  for (;;) {
    double s = 0.0;
    for (int i = 0; i < n - 1; i++) s += (th[i] = -PI + TWO_PI * rng_u(g));
    if (n == 1) return;
    th[n - 1] = -s;
    const double dd = weyl_d(n, th), j2 = dd == 0.0 ? 0.0 : exp(2.0 * log(fabs(dd)));
    if (rng_u(g) * jmax < j2) break;
  }
  df_group_canon_row(G, th);
}

static int sample_rows(df_tensor *out, const df_group *G, int64_t n, double *d)
{
  int st = out_like(out, n, G->n);
  return st ? st : upload_doubles(out, d, n * G->n);
}

int df_group_haar(df_tensor *out, const df_group *G, int64_t n, uint64_t seed, uint64_t stream)
{
  if (n < 0 || n > ((int64_t)1 << 36)) return df_fail(DF_EARG, "n must be from 0 to 2^36 (got %lld)", (long long)n);
  double *d = (double *)malloc(sizeof(double) * (size_t)(n * G->n > 0 ? n * G->n : 1));
  if (!d) return df_fail(DF_ENOMEM, "out of memory");
#pragma omp parallel for schedule(static) if (n > 4096)
  for (int64_t r = 0; r < n; r++) {
    rowrng g;
    rng_init(&g, seed, stream, r);
    if (G->kind == DF_GROUP_U1) d[r] = wrap_angle(-PI + TWO_PI * rng_u(&g));
    else haar_row(G, &g, d + r * G->n);
  }
  int st = sample_rows(out, G, n, d);
  free(d);
  return st;
}

/* log, score and divergence per row of theta at width w_r (or w0): the heat kernel in `form`
   (cf NULL) or the class function cf; outputs NULL are skipped */
static int eval_points(df_tensor *logk, df_tensor *score, df_tensor *div, const df_group *G,
                       const df_class_fn *cf, const df_tensor *theta, const df_tensor *w, double w0,
                       int form)
{
  double *d = NULL;
  int st;
  if ((st = df_group_check_points(G, theta))) return st;
  const int64_t rows = theta->shape[0];
  const int k = G->n;
  if (!cf || w || w0 != 0.0) /* (a class function at w = 0: the target itself) */
    if ((st = df_group_check_widths(w, w0, rows))) return st;
  if ((st = rows_in(G, theta, &d))) return st;
  double *lk = (double *)malloc(sizeof(double) * (size_t)(rows > 0 ? rows : 1));
  double *sc = (double *)malloc(sizeof(double) * (size_t)(rows * k > 0 ? rows * k : 1));
  double *dv = (double *)malloc(sizeof(double) * (size_t)(rows > 0 ? rows : 1));
  float *wf = w ? (float *)malloc(sizeof(float) * (size_t)(rows > 0 ? rows : 1)) : NULL;
  if (!lk || !sc || !dv || (w && !wf)) st = df_fail(DF_ENOMEM, "out of memory");
  if (!st && w && rows > 0) st = w->be->download(w->dev, wf, df_data(w), rows);
  const reps *R;
  if (!st && !cf) st = heat_reps(G, &R); /* (built before the parallel loop) */
  if (!st) {
#pragma omp parallel for schedule(static) if (rows > 256)
    for (int64_t r = 0; r < rows; r++) {
      const double wr = w ? (double)wf[r] : w0;
      double *sr = score ? sc + r * k : NULL, *dr = div ? dv + r : NULL;
      if (cf) df_class_row(cf, d + r * k, wr, lk + r, sr, dr);
      else df_group_heat_row(G, d + r * k, wr, form, lk + r, sr, dr);
    }
  }
  if (!st && logk) st = rows_out(logk, theta, lk, rows, 0);
  if (!st && score) st = rows_out(score, theta, sc, rows, k);
  if (!st && div) st = rows_out(div, theta, dv, rows, 0);
  free(d);
  free(lk);
  free(sc);
  free(dv);
  free(wf);
  return st;
}

int df_group_heat(df_tensor *logk, df_tensor *score, df_tensor *div, const df_group *G,
                  const df_tensor *theta, const df_tensor *w, double w0, int form)
{
  return eval_points(logk, score, div, G, NULL, theta, w, w0, form);
}

/* complex numbers as (re, im) pairs (SU(3) matrices as real and imaginary parts, row-major) */
typedef struct cx { double re, im; } cx;

static cx cx_mul(cx a, cx b) { cx r = { a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re }; return r; }
static cx cx_add(cx a, cx b) { cx r = { a.re + b.re, a.im + b.im }; return r; }
static cx cx_sub(cx a, cx b) { cx r = { a.re - b.re, a.im - b.im }; return r; }
static cx cx_conj(cx a) { cx r = { a.re, -a.im }; return r; }
static cx cx_expi(double x) { cx r = { cos(x), sin(x) }; return r; }
static double cx_abs(cx a) { return hypot(a.re, a.im); }
static double cx_re_div(cx a, cx b) /* Re(a / b) */
{
  return (a.re * b.re + a.im * b.im) / (b.re * b.re + b.im * b.im);
}

/* one heat-kernel draw at width w: from Haar with K / K(identity) (K is largest there), or from
   the eigenvalues of a Gaussian in the Lie algebra (traceless Hermitian, coefficients N(0, w^2)
   on an orthonormal basis: density Q ∝ L(x)^2 e^{-|x|^2 / 2 w^2}, L = prod x_ij), wrapped,
   whichever accepts more. f = K h is the wrap of F(x) = kappa L(x) D e^{-|x|^2 / 2 w^2} and
   |D| <= |L| (|2 sin(u/2)| <= |u|), so a draw is kept with probability sum_n L_n D e_n / sum_n
   L_n^2 e_n over the shifts; the rate is 1 / (kappa I(w)), I(w) = the integral of L^2 e^{..} over
   the plane, Mehta's: w^(N^2 - 1) (2 pi)^((N-1)/2) prod_{j<=N} j! / sqrt N (1 as w -> 0) */
typedef struct heat_plan {
  int gauss;
  double w, logk0;
} heat_plan;

static void heat_plan_make(const df_group *G, double w, heat_plan *p)
{
  const int n = G->n;
  double id[DF_GROUP_MAXN] = { 0 };
  df_group_heat_row(G, id, w, DF_FORM_AUTO, &p->logk0, NULL, NULL);
  const double fact = n == 2 ? 2.0 : 6.0, jmax = n == 2 ? 4.0 : 27.0, prodfact = n == 2 ? 2.0 : 12.0;
  const double acc_haar = fact / jmax * exp(-p->logk0);
  const double logi = (n * n - 1.0) * log(w) + 0.5 * (n - 1) * log(TWO_PI) + log(prodfact) - 0.5 * log((double)n);
  const double logkappa = log_cw(G, w) - log(fact) - (n - 1) * log(TWO_PI);
  p->gauss = exp(-(logi + logkappa)) > acc_haar;
  p->w = w;
}

/* the three real roots of z^3 + p z + q = 0 (p <= 0: a Hermitian matrix's, or a unitary's in the
   tan(theta/2) variable) by Viete's cosines; p = 0 to rounding: the triple root cbrt(-q) */
static void depressed_cubic_roots(double p, double q, double *z)
{
  if (!(p < -1e-300)) {
    z[0] = z[1] = z[2] = cbrt(-q);
    return;
  }
  const double m = 2.0 * sqrt(-p / 3.0);
  double c = 3.0 * q / (p * m);
  c = c > 1.0 ? 1.0 : c < -1.0 ? -1.0 : c;
  const double a0 = acos(c) / 3.0;
  for (int k = 0; k < 3; k++) z[k] = m * cos(a0 - k * (TWO_PI / 3.0));
}

/* the eigenvalues of a traceless Hermitian N x N (N = 2, 3) with N(0, w^2) coefficients on an
   orthonormal basis (Tr AB): N = 2, +-|c| / sqrt 2; N = 3, the roots of l^3 - (Tr A^2 / 2) l -
   det A by Viete's cosines */
static void algebra_gaussian_eigs(int n, double w, rowrng *g, double *x)
{
  if (n == 2) {
    double c2 = 0.0;
    for (int i = 0; i < 3; i++) {
      const double c = w * rng_n(g);
      c2 += c * c;
    }
    x[0] = sqrt(0.5 * c2);
    x[1] = -x[0];
    return;
  }
  const double r2 = 0.70710678118654752440, r6 = 0.40824829046386301637;
  const double c1 = w * rng_n(g), c2 = w * rng_n(g);
  const double d0 = c1 * r2 + c2 * r6, d1 = -c1 * r2 + c2 * r6, d2 = -2.0 * c2 * r6;
  cx o01 = { w * rng_n(g) * r2, w * rng_n(g) * r2 }, o02 = { w * rng_n(g) * r2, w * rng_n(g) * r2 };
  cx o12 = { w * rng_n(g) * r2, w * rng_n(g) * r2 };
  const double m01 = o01.re * o01.re + o01.im * o01.im, m02 = o02.re * o02.re + o02.im * o02.im;
  const double m12 = o12.re * o12.re + o12.im * o12.im;
  const double tr2 = d0 * d0 + d1 * d1 + d2 * d2 + 2.0 * (m01 + m02 + m12);
  /* det = d0 d1 d2 + 2 Re(o01 o12 conj(o02)) - d0 |o12|^2 - d1 |o02|^2 - d2 |o01|^2 */
  const double det = d0 * d1 * d2 + 2.0 * cx_mul(cx_mul(o01, o12), cx_conj(o02)).re - d0 * m12 - d1 * m02 - d2 * m01;
  depressed_cubic_roots(-0.5 * tr2, -det, x);
  x[2] = -(x[0] + x[1]); /* (the sum exactly 0) */
}

static void heat_row_draw(const df_group *G, const heat_plan *p, rowrng *g, double *th)
{
  const int n = G->n;
  if (!p->gauss) {
    for (;;) {
      haar_row(G, g, th);
      double lk;
      df_group_heat_row(G, th, p->w, DF_FORM_AUTO, &lk, NULL, NULL);
      if (log(rng_u(g)) < lk - p->logk0 - 1e-12) return;
    }
  }
  for (;;) {
    algebra_gaussian_eigs(n, p->w, g, th);
    df_group_canon_row(G, th);
    const int R = shift_radius(n, th, p->w);
    int nv[2] = { 0, 0 };
    double x[DF_GROUP_MAXN], gL[DF_GROUP_MAXN], L, f = 0.0, q = 0.0, D = weyl_d(n, th);
    for (nv[0] = -R; nv[0] <= R; nv[0]++)
      for (nv[1] = n > 2 ? -R : 0; nv[1] <= (n > 2 ? R : 0); nv[1]++) {
        const double e = exp(shift_terms(n, th, nv, p->w, x, &L, gL));
        f += L * D * e;
        q += L * L * e;
      }
    if (rng_u(g) * q <= f) return;
  }
}

int df_group_heat_sample(df_tensor *out, const df_group *G, int64_t n, double w0, uint64_t seed,
                         uint64_t stream)
{
  int st;
  if (n < 0 || n > ((int64_t)1 << 36)) return df_fail(DF_EARG, "n must be from 0 to 2^36 (got %lld)", (long long)n);
  if ((st = df_group_check_widths(NULL, w0, 0))) return st;
  const reps *R;
  if ((st = heat_reps(G, &R))) return st;
  heat_plan p = { 0 };
  if (G->kind == DF_GROUP_SU) heat_plan_make(G, w0, &p);
  double *d = (double *)malloc(sizeof(double) * (size_t)(n * G->n > 0 ? n * G->n : 1));
  if (!d) return df_fail(DF_ENOMEM, "out of memory");
#pragma omp parallel for schedule(static) if (n > 1024)
  for (int64_t r = 0; r < n; r++) {
    rowrng g;
    rng_init(&g, seed, stream, r);
    if (G->kind == DF_GROUP_U1) d[r] = wrap_angle(w0 * rng_n(&g));
    else heat_row_draw(G, &p, &g, d + r * G->n);
  }
  st = sample_rows(out, G, n, d);
  free(d);
  return st;
}

int df_class_eval(df_tensor *logp, df_tensor *score, df_tensor *div, const df_class_fn *cf,
                  const df_tensor *theta, const df_tensor *w, double w0)
{
  return eval_points(logp, score, div, &cf->G, cf, theta, w, w0, DF_FORM_AUTO);
}

/* S (with_haar 0) or the unnormalised eigenangle log-density -S + log h (1), per row */
int df_action_eval(df_tensor *out, const df_group *G, double beta, const double *coef, int ncoef,
                   const df_tensor *theta, int with_haar)
{
  double *d = NULL;
  int st;
  if ((st = df_group_check_points(G, theta)) || (st = rows_in(G, theta, &d))) return st;
  const int64_t rows = theta->shape[0];
  for (int64_t r = 0; r < rows; r++) {
    const double *th = d + r * G->n, a = df_action_row(G, beta, coef, ncoef, th);
    d[r] = with_haar ? -a + df_group_haar_logh_row(G, th) : a; /* (row r's slot is read first) */
  }
  st = rows_out(out, theta, d, rows, 0);
  free(d);
  return st;
}

/* ---- exact draws of a toy action: rejection from the uniform torus -------------------------- */

int df_action_sample(df_tensor *out, const df_group *G, double beta, const double *coef, int ncoef,
                     int64_t n, uint64_t seed, uint64_t stream)
{
  if (n < 0 || n > ((int64_t)1 << 36)) return df_fail(DF_EARG, "n must be from 0 to 2^36 (got %lld)", (long long)n);
  const int k = G->n, M = k == 3 ? 512 : 4096;
  /* max of -S over a grid, plus its largest change within half a cell: |d(-S)/d theta_i| <=
     2 (beta / N) sum |c_j| j for each of the N - 1 free angles */
  double amax = -INFINITY, lip = 0.0, th[DF_GROUP_MAXN];
  for (int j = 1; j <= ncoef; j++) lip += fabs(coef[j - 1]) * j;
  lip *= 2.0 * fabs(beta) / k;
  const int npts = k == 3 ? M * M : M;
  for (int i = 0; i < npts; i++) {
    th[0] = -PI + TWO_PI * (k == 3 ? i / M : i) / M;
    if (k == 2) th[1] = -th[0];
    if (k == 3) {
      th[1] = -PI + TWO_PI * (i % M) / M;
      th[2] = -th[0] - th[1];
    }
    double a = -df_action_row(G, beta, coef, ncoef, th);
    if (a > amax) amax = a;
  }
  const double bound = amax + lip * (k > 1 ? k - 1 : 1) * (PI / M) + 1e-12;
  double *d = (double *)malloc(sizeof(double) * (size_t)(n * k > 0 ? n * k : 1));
  if (!d) return df_fail(DF_ENOMEM, "out of memory");
#pragma omp parallel for schedule(static) if (n > 1024)
  for (int64_t r = 0; r < n; r++) {
    rowrng g;
    rng_init(&g, seed, stream, r);
    double *x = d + r * k;
    for (;;) {
      if (G->kind == DF_GROUP_U1) x[0] = -PI + TWO_PI * rng_u(&g);
      else haar_row(G, &g, x);
      double a = -df_action_row(G, beta, coef, ncoef, x);
      if (log(rng_u(&g)) < a - bound) break;
    }
    df_group_canon_row(G, x);
  }
  int st = sample_rows(out, G, n, d);
  free(d);
  return st;
}

/* ---- score sources -------------------------------------------------------------------------- */

/* the width at time t, > 0 */
static int width_at(const df_group_score *gs, double t, double *w)
{
  double s2 = df_diffuser_sigma2_host(&gs->diff, t);
  if (!(s2 > 0.0)) return df_fail(DF_EARG, "the group score is singular at t = %g (sigma = 0)", t);
  *w = sqrt(s2);
  return DF_OK;
}

void df_group_score_free(df_group_score *gs)
{
  free(gs->cx);
  free(gs->ct);
  free(gs->cdiv);
  gs->cx = gs->ct = gs->cdiv = NULL;
  gs->ccap = gs->crows = 0;
  gs->cvalid = 0;
}

/* rows of x projected onto sum 0 (the sampler's points drift off it by rounding), evaluated;
   score into out and/or divergences into divout, both computed and the latter cached */
static int gs_eval(df_group_score *gs, df_tensor *out, float *divout, const df_tensor *x,
                   const df_tensor *t, double t0)
{
  const int k = gs->G.n;
  int st;
  if (x->ndim != 2 || x->shape[1] != k) return df_group_check_points(&gs->G, x);
  const int64_t rows = x->shape[0], n = rows * k;
  if (rows > gs->ccap) {
    df_group_score_free(gs);
    gs->cx = (float *)malloc(sizeof(float) * (size_t)n);
    gs->ct = (float *)malloc(sizeof(float) * (size_t)rows);
    gs->cdiv = (float *)malloc(sizeof(float) * (size_t)rows);
    if (!gs->cx || !gs->ct || !gs->cdiv) {
      df_group_score_free(gs);
      return df_fail(DF_ENOMEM, "out of memory");
    }
    gs->ccap = rows;
  }
  float *h = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  float *tr = (float *)malloc(sizeof(float) * (size_t)(rows > 0 ? rows : 1));
  if (!h || !tr) {
    free(h);
    free(tr);
    return df_fail(DF_ENOMEM, "out of memory");
  }
  st = n > 0 ? x->be->download(x->dev, h, df_data(x), n) : DF_OK;
  if (!st && t && rows > 0) st = t->be->download(t->dev, tr, df_data(t), rows);
  /* the divergence of the points and times just scored */
  if (!st && !out && gs->cvalid && gs->crows == rows && (t ? gs->ct0 < 0.0 : gs->ct0 == t0) &&
      memcmp(gs->cx, h, sizeof(float) * (size_t)n) == 0 &&
      (!t || memcmp(gs->ct, tr, sizeof(float) * (size_t)rows) == 0)) {
    st = rows > 0 ? x->be->upload(x->dev, divout, gs->cdiv, rows) : DF_OK;
    free(h);
    free(tr);
    return st;
  }
  double w0 = 0.0;
  if (!st && !t) st = width_at(gs, t0, &w0);
  for (int64_t r = 0; !st && t && r < rows; r++) {
    double w;
    st = width_at(gs, tr[r], &w);
  }
  if (!st) {
    memcpy(gs->cx, h, sizeof(float) * (size_t)n);
    if (t) memcpy(gs->ct, tr, sizeof(float) * (size_t)rows);
    gs->crows = rows;
    gs->ct0 = t ? -1.0 : t0;
#pragma omp parallel for schedule(static) if (rows > 256)
    for (int64_t r = 0; r < rows; r++) {
      double th[DF_GROUP_MAXN], s[DF_GROUP_MAXN], lk, d, w = w0;
      for (int j = 0; j < k; j++) th[j] = h[r * k + j];
      if (gs->G.kind == DF_GROUP_SU) project(k, th);
      if (t) w = sqrt(df_diffuser_sigma2_host(&gs->diff, tr[r]));
      if (gs->cf) df_class_row(gs->cf, th, w, &lk, s, &d);
      else df_group_heat_row(&gs->G, th, w, DF_FORM_AUTO, &lk, s, &d);
      for (int j = 0; j < k; j++) h[r * k + j] = (float)s[j];
      gs->cdiv[r] = (float)d;
    }
    gs->cvalid = 1;
    if (out) st = n > 0 ? x->be->upload(x->dev, df_data(out), h, n) : DF_OK;
    if (!st && divout && rows > 0) st = x->be->upload(x->dev, divout, gs->cdiv, rows);
  }
  if (st) gs->cvalid = 0;
  free(h);
  free(tr);
  return st;
}

int df_group_score_eval(void *ctx, df_tensor *out, const df_tensor *x, float t)
{
  return gs_eval((df_group_score *)ctx, out, NULL, x, NULL, t);
}

int df_group_score_eval_rows(void *ctx, df_tensor *out, const df_tensor *x, const df_tensor *t)
{
  int st;
  if (!df_is_live(out) && (st = df_tensor_like(out, x))) return st;
  if (t->numel != x->shape[0]) return df_fail(DF_EARG, "t must hold one time per row (%lld)", (long long)x->shape[0]);
  return gs_eval((df_group_score *)ctx, out, NULL, x, t, 0.0);
}

int df_group_score_div(void *ctx, float *out, const df_tensor *x, const df_tensor *t, float t0)
{
  return gs_eval((df_group_score *)ctx, NULL, out, x, t, t0);
}

/* log of the eigenangle density at time t (what samplers' log q is compared with): log p_t
   (relative to Haar) + log h; a class function at t = 0 is its target */
int df_group_score_log_density(const df_group_score *gs, df_tensor *out, const df_tensor *x,
                               const df_tensor *t, double t0)
{
  const df_group *G = &gs->G;
  double *d = NULL;
  int st;
  if ((st = df_group_check_points(G, x)) || (st = rows_in(G, x, &d))) return st;
  const int64_t rows = x->shape[0];
  const int k = G->n;
  float *tr = t ? (float *)malloc(sizeof(float) * (size_t)(rows > 0 ? rows : 1)) : NULL;
  double *lp = (double *)malloc(sizeof(double) * (size_t)(rows > 0 ? rows : 1));
  if ((t && !tr) || !lp) st = df_fail(DF_ENOMEM, "out of memory");
  if (!st && t) {
    if (t->numel != rows) st = df_fail(DF_EARG, "t must be a number or hold one time per row (%lld)", (long long)rows);
    else if (rows > 0) st = t->be->download(t->dev, tr, df_data(t), rows);
  }
  for (int64_t r = 0; !st && r < rows; r++) {
    double tt = t ? (double)tr[r] : t0, s2 = df_diffuser_sigma2_host(&gs->diff, tt);
    if (!(tt >= 0.0) || !isfinite(tt)) st = df_fail(DF_EARG, "times must be finite and >= 0 (got %g)", tt);
    else if (!gs->cf && !(s2 > 0.0))
      st = df_fail(DF_EARG, "the heat kernel at t = %g has width 0 (a point mass): use t > 0", tt);
  }
  if (!st) {
#pragma omp parallel for schedule(static) if (rows > 256)
    for (int64_t r = 0; r < rows; r++) {
      double tt = t ? (double)tr[r] : t0, w = sqrt(df_diffuser_sigma2_host(&gs->diff, tt)), lk;
      if (gs->cf) df_class_row(gs->cf, d + r * k, w, &lk, NULL, NULL);
      else df_group_heat_row(G, d + r * k, w, DF_FORM_AUTO, &lk, NULL, NULL);
      lp[r] = lk + df_group_haar_logh_row(G, d + r * k);
    }
    st = rows_out(out, x, lp, rows, 0);
  }
  free(d);
  free(tr);
  free(lp);
  return st;
}

/* n exact draws at time t0: the heat kernel at sigma(t0); a class function at t0 = 0 only */
int df_group_score_sample(const df_group_score *gs, df_tensor *out, int64_t n, double t0,
                          uint64_t seed, uint64_t stream)
{
  double s2 = df_diffuser_sigma2_host(&gs->diff, t0);
  if (gs->cf) {
    if (t0 != 0.0)
      return df_fail(DF_EARG, "draws of a class function are exact at t = 0 only (got t = %g)", t0);
    return df_fail(DF_EARG, "draw from the target itself (target:sample(n))");
  }
  if (!(s2 > 0.0)) return df_fail(DF_EARG, "the heat kernel at t = %g has width 0: use t > 0", t0);
  return df_group_heat_sample(out, &gs->G, n, sqrt(s2), seed, stream);
}

/* ---- the reverse SDE on eigenangles -------------------------------------------------------- */

/* Euler-Maruyama on the group on the grid times[0] > ... > times[nt - 1], every row on its own
   streams: U <- exp(i g sqrt(dt) Z) exp(i g^2 s dt) U with g at the step's start, the noise a draw
   of the group's Brownian motion (the heat kernel at width g sqrt(dt), Haar eigenvectors), so on
   eigenangles the drift g^2 s plus whatever the noise implies (groups.md: (g^2 / 2) P grad log
   J^2, singular where angles meet, which an eigenangle step would have to take explicitly). The
   score is taken at the step's start, where sigma > 0. x is [B, N], replaced by the canonical
   result. */
static void group_noise_row(const df_group *G, const heat_plan *p, const double *x0, rowrng *g,
                            int shuffle, double *xt, double *target); /* (with the pairs, below) */

int df_group_reverse_sde(df_tensor *x, const df_group_score *gs, const double *times, int nt,
                         uint64_t seed, uint64_t stream)
{
  const df_group *G = &gs->G;
  double *d = NULL;
  int st;
  if ((st = df_group_check_points(G, x)) || (st = rows_in(G, x, &d))) return st;
  for (int k = 0; k + 1 < nt; k++) {
    double s2 = df_diffuser_sigma2_host(&gs->diff, times[k]);
    if (!(times[k + 1] < times[k])) {
      free(d);
      return df_fail(DF_EARG, "the times must decrease");
    }
    if (!(s2 > 0.0)) {
      free(d);
      return df_fail(DF_EARG, "the group score is singular at t = %g (sigma = 0)", times[k]);
    }
  }
  const int64_t rows = x->shape[0];
  const int n = G->n, su = G->kind == DF_GROUP_SU;
  /* each step: the drift g^2 s dt on eigenangles, then the group's own noise, a heat-kernel draw
     at width g sqrt(dt) with Haar eigenvectors multiplied on as a matrix (group_noise_row): the
     Dyson drift of the eigenangles comes with it, never evaluated, so nothing is singular where
     angles meet */
  heat_plan *plan = (heat_plan *)calloc((size_t)(nt > 1 ? nt - 1 : 1), sizeof(heat_plan));
  if (!plan) {
    free(d);
    return df_fail(DF_ENOMEM, "out of memory");
  }
  for (int k = 0; k + 1 < nt; k++) {
    const double gg = df_diffuser_g_host(&gs->diff, times[k]);
    plan[k].w = gg * sqrt(times[k] - times[k + 1]);
    if (su && plan[k].w > 0.0) heat_plan_make(G, plan[k].w, &plan[k]);
  }
#pragma omp parallel for schedule(static) if (rows > 64)
  for (int64_t r = 0; r < rows; r++) {
    rowrng g;
    rng_init(&g, seed, stream, r);
    double *th = d + r * n;
    for (int k = 0; k + 1 < nt; k++) {
      const double t = times[k], dt = t - times[k + 1];
      const double gg = df_diffuser_g_host(&gs->diff, t), g2 = gg * gg;
      const double w = sqrt(df_diffuser_sigma2_host(&gs->diff, t));
      double s[DF_GROUP_MAXN], lk, y[DF_GROUP_MAXN];
      if (su) project(n, th);
      if (gs->cf) df_class_row(gs->cf, th, w, &lk, s, NULL);
      else df_group_heat_row(G, th, w, DF_FORM_AUTO, &lk, s, NULL);
      for (int i = 0; i < n; i++) y[i] = th[i] + g2 * s[i] * dt;
      if (su) df_group_canon_row(G, y);
      if (plan[k].w > 0.0) group_noise_row(G, &plan[k], y, &g, 0, th, NULL);
      else memcpy(th, y, (size_t)n * sizeof(double));
    }
    df_group_canon_row(G, th);
  }
  free(plan);
  st = upload_doubles(x, d, rows * n);
  free(d);
  return st;
}

/* ---- denoising pairs with group noise -------------------------------------------------------- */

/* the eigenangles of U in SU(3) from tau = Tr U alone: lambda = e^{i theta} solves
   lambda^3 - tau lambda^2 + conj(tau) lambda - 1 = 0, i.e. f(theta) = Im(u^3 - tau u) = 0 with
   u = e^{i theta / 2}. With theta = phi + 2 atan(y), f / cos^3 is a real cubic in y with three real
   roots; of phi in {0, +-2 pi / 3} the one with the largest leading coefficient keeps every root
   finite (no two eigenvalues sit at opposite points to all three choices: the angles sum to 0) */
static void su3_eigenangles(cx tau, double *th)
{
  double best[4] = { 0 }, phi = 0.0;
  for (int k = -1; k <= 1; k++) {
    const double ph = k * (TWO_PI / 3.0);
    const cx P = cx_expi(1.5 * ph), Q = cx_mul(tau, cx_expi(0.5 * ph));
    const double a[4] = { P.im - Q.im, 3.0 * P.re - Q.re, -(3.0 * P.im + Q.im), -(P.re + Q.re) };
    if (k == -1 || fabs(a[3]) > fabs(best[3])) {
      memcpy(best, a, sizeof best);
      phi = ph;
    }
  }
  const double b2 = best[2] / best[3], b1 = best[1] / best[3], b0 = best[0] / best[3];
  /* y = z - b2/3: z^3 + p z + q = 0 */
  double y[3];
  depressed_cubic_roots(b1 - b2 * b2 / 3.0, 2.0 * b2 * b2 * b2 / 27.0 - b2 * b1 / 3.0 + b0, y);
  for (int k = 0; k < 3; k++) y[k] -= b2 / 3.0;
  for (int k = 0; k < 3; k++) {
    for (int it = 0; it < 2; it++) { /* Newton, kept only where it helps (not at double roots) */
      const double f = ((y[k] + b2) * y[k] + b1) * y[k] + b0, d = (3.0 * y[k] + 2.0 * b2) * y[k] + b1;
      if (!(fabs(d) > 1e-12)) break;
      const double yn = y[k] - f / d, fn = ((yn + b2) * yn + b1) * yn + b0;
      if (!(fabs(fn) < fabs(f))) break;
      y[k] = yn;
    }
    th[k] = phi + 2.0 * atan(y[k]);
  }
}

/* a 3x3 unitary from complex Gaussian columns by Gram-Schmidt: Haar up to the columns' phases,
   which V diag(.) V^dagger does not see */
static void su3_haar_vectors(rowrng *g, cx V[3][3])
{
  for (int c = 0; c < 3; c++) {
    double nn;
    do {
      for (int r = 0; r < 3; r++) {
        V[r][c].re = rng_n(g);
        V[r][c].im = rng_n(g);
      }
      for (int j = 0; j < c; j++) { /* minus <v_j, v_c> v_j */
        cx d = { 0.0, 0.0 };
        for (int r = 0; r < 3; r++) d = cx_add(d, cx_mul(cx_conj(V[r][j]), V[r][c]));
        for (int r = 0; r < 3; r++) V[r][c] = cx_sub(V[r][c], cx_mul(d, V[r][j]));
      }
      nn = 0.0;
      for (int r = 0; r < 3; r++) nn += V[r][c].re * V[r][c].re + V[r][c].im * V[r][c].im;
    } while (!(nn > 1e-20));
    nn = 1.0 / sqrt(nn);
    for (int r = 0; r < 3; r++) {
      V[r][c].re *= nn;
      V[r][c].im *= nn;
    }
  }
}

/* SU(3): U_t = V diag(e^{i xs}) V^dagger diag(e^{i theta_0}); the target on U_t's eigenvector k is
   <p_k| M |p_k> = Tr(Pi_k M), M = V diag(s(xs)) V^dagger, with Sylvester's projector
   Pi_k = (U - l_i)(U - l_j) / ((l_k - l_i)(l_k - l_j)): so Re[(Tr U^2 M - (l_i + l_j) Tr U M
   + l_i l_j Tr M) / ((l_k - l_i)(l_k - l_j))], three traces for all k. Eigenvalues closer than
   1e-7 share their pair's trace Tr M - target_k equally (the projector of the pair is what is
   defined there, and the conditional mean of the two is the same by the Weyl symmetry). */
static void su3_pair(const double *x0, const double *xs, const double *sc, rowrng *g, double *xt,
                     double *target)
{
  cx V[3][3], U[3][3], U2[3][3], M[3][3];
  su3_haar_vectors(g, V);
  cx e[3];
  for (int k = 0; k < 3; k++) e[k] = cx_expi(xs[k]);
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 3; b++) {
      cx u = { 0.0, 0.0 }, m = { 0.0, 0.0 };
      for (int k = 0; k < 3; k++) {
        const cx vv = cx_mul(V[a][k], cx_conj(V[b][k]));
        u = cx_add(u, cx_mul(e[k], vv));
        if (sc) {
          m.re += sc[k] * vv.re;
          m.im += sc[k] * vv.im;
        }
      }
      U[a][b] = cx_mul(u, cx_expi(x0[b]));
      M[a][b] = m;
    }
  if (!target) { /* the product's eigenangles alone (a step of group noise) */
    su3_eigenangles(cx_add(cx_add(U[0][0], U[1][1]), U[2][2]), xt);
    return;
  }
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 3; b++) {
      cx s = { 0.0, 0.0 };
      for (int k = 0; k < 3; k++) s = cx_add(s, cx_mul(U[a][k], U[k][b]));
      U2[a][b] = s;
    }
  cx tau = { 0.0, 0.0 }, t1 = { 0.0, 0.0 }, t2 = { 0.0, 0.0 }, t0 = { 0.0, 0.0 };
  for (int a = 0; a < 3; a++) {
    tau = cx_add(tau, U[a][a]);
    t0 = cx_add(t0, M[a][a]);
    for (int b = 0; b < 3; b++) {
      t1 = cx_add(t1, cx_mul(U[a][b], M[b][a]));
      t2 = cx_add(t2, cx_mul(U2[a][b], M[b][a]));
    }
  }
  double th[3];
  su3_eigenangles(tau, th);
  cx l[3];
  for (int k = 0; k < 3; k++) l[k] = cx_expi(th[k]);
  int near[3][3] = { { 0 } };
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) near[i][j] = i != j && cx_abs(cx_sub(l[i], l[j])) < 1e-7;
  int done[3] = { 0, 0, 0 };
  for (int k = 0; k < 3; k++) {
    const int i = (k + 1) % 3, j = (k + 2) % 3;
    if (near[k][i] || near[k][j]) continue;
    const cx num = cx_add(cx_sub(t2, cx_mul(cx_add(l[i], l[j]), t1)), cx_mul(cx_mul(l[i], l[j]), t0));
    target[k] = cx_re_div(num, cx_mul(cx_sub(l[k], l[i]), cx_sub(l[k], l[j])));
    done[k] = 1;
  }
  const int ndone = done[0] + done[1] + done[2];
  if (ndone < 3) { /* a degenerate pair (ndone 1) or all three equal (ndone 0) */
    double rest = t0.re;
    for (int k = 0; k < 3; k++) rest -= done[k] ? target[k] : 0.0;
    for (int k = 0; k < 3; k++)
      if (!done[k]) target[k] = rest / (3 - ndone);
  }
  memcpy(xt, th, sizeof th);
}

/* U' = exp(iA) U_0 for U_0 = diag(e^{i x0}), A with eigenangles from the heat kernel at width w
   (plan p) and Haar eigenvectors: a draw of the group's Brownian motion from U_0 over w^2 (the
   reverse SDE's noise), and, with target, the noise's score read on U''s eigenbasis (the target of
   denoising score matching). xt gets U''s eigenangles, canonical; shuffle: in a uniformly random
   one of their N! orders (the Weyl images are equally likely), else in the order they come.
   SU(2) in the c I + i v.sigma form (unit quaternions): exp(iA) = cos x + i sin x n.sigma, n
   uniform on the sphere; the product's eigenvector of e^{i theta_t} is m.sigma = +1 (m = v / |v|),
   and <m+| n.sigma |m+> = n.m. SU(3) as 3x3 matrices (su3_pair). U(1): theta_0 + xs. */
static void group_noise_row(const df_group *G, const heat_plan *p, const double *x0, rowrng *g,
                            int shuffle, double *xt, double *target)
{
  const double w = p->w;
  double z[DF_GROUP_MAXN] = { 0 }, sc[DF_GROUP_MAXN], lk;
  if (G->kind == DF_GROUP_U1) {
    z[0] = wrap_angle(w * rng_n(g));
    xt[0] = wrap_angle(x0[0] + z[0]);
    if (target) {
      df_group_heat_row(G, z, w, DF_FORM_AUTO, &lk, sc, NULL);
      target[0] = sc[0];
    }
    return;
  }
  heat_row_draw(G, p, g, z);
  if (target) df_group_heat_row(G, z, w, DF_FORM_AUTO, &lk, sc, NULL);
  if (G->n == 3) {
    su3_pair(x0, z, target ? sc : NULL, g, xt, target);
    df_group_canon_row(G, xt); /* (wraps and fixes the sum; the order is kept) */
    if (!shuffle) return;
    for (int i = 2; i > 0; i--) { /* Fisher-Yates, angles and targets together */
      int j = (int)(rng_u(g) * (i + 1));
      if (j > i) j = i;
      double a = xt[i];
      xt[i] = xt[j], xt[j] = a;
      if (target) {
        a = target[i];
        target[i] = target[j], target[j] = a;
      }
    }
    return;
  }
  double nv[3], nn = 0.0;
  do {
    nn = 0.0;
    for (int i = 0; i < 3; i++) {
      nv[i] = rng_n(g);
      nn += nv[i] * nv[i];
    }
  } while (!(nn > 1e-20));
  nn = sqrt(nn);
  for (int i = 0; i < 3; i++) nv[i] /= nn;
  const double c1 = cos(z[0]), s1 = sin(z[0]), a = x0[0], c2 = cos(a), s2 = sin(a);
  /* (c1 + i s1 n.sigma)(c2 + i s2 e_z.sigma) */
  const double C = c1 * c2 - s1 * s2 * nv[2];
  const double V[3] = { c2 * s1 * nv[0] - s1 * s2 * nv[1], c2 * s1 * nv[1] + s1 * s2 * nv[0],
                        c1 * s2 + c2 * s1 * nv[2] };
  const double vn = sqrt(V[0] * V[0] + V[1] * V[1] + V[2] * V[2]);
  const double th = atan2(vn, C);
  /* without shuffle theta_1 stays the angle on e_z's side (U_0's order, for small noise) */
  const double sw = shuffle ? (rng_u(g) < 0.5 ? 1.0 : -1.0) : (V[2] >= 0.0 ? 1.0 : -1.0);
  xt[0] = sw * th;
  xt[1] = -sw * th;
  if (target) {
    const double nm = vn > 0.0 ? (nv[0] * V[0] + nv[1] * V[1] + nv[2] * V[2]) / vn : 1.0;
    target[0] = sw * sc[0] * nm;
    target[1] = -sw * sc[0] * nm;
  }
}

/* row r of the denoising pairs at time t (streams as df_group_dsm_pairs) */
void df_group_dsm_pair_row(const df_group *G, const df_diffuser *D, const double *x0, double t,
                           uint64_t seed, uint64_t stream, int64_t row, double *xt, double *target)
{
  rowrng g;
  rng_init(&g, seed, stream, row);
  heat_plan p = { 0 };
  p.w = sqrt(df_diffuser_sigma2_host(D, t));
  if (G->kind == DF_GROUP_SU) heat_plan_make(G, p.w, &p);
  group_noise_row(G, &p, x0, &g, 1, xt, target);
}

int df_group_dsm_pairs(df_tensor *out_x, df_tensor *out_s, const df_group *G, const df_diffuser *D,
                       const df_tensor *x0, const df_tensor *t, uint64_t seed, uint64_t stream)
{
  double *d = NULL;
  int st;
  if ((st = df_group_check_points(G, x0)) || (st = df_need_live(t))) return st;
  const int64_t rows = x0->shape[0];
  const int n = G->n;
  if (t->numel != rows) return df_fail(DF_EARG, "t must hold one time per row (%lld)", (long long)rows);
  if ((st = rows_in(G, x0, &d))) return st;
  float *tr = (float *)malloc(sizeof(float) * (size_t)(rows > 0 ? rows : 1));
  double *xs = (double *)malloc(sizeof(double) * (size_t)(rows * n > 0 ? rows * n : 1));
  double *ss = (double *)malloc(sizeof(double) * (size_t)(rows * n > 0 ? rows * n : 1));
  if (!tr || !xs || !ss) st = df_fail(DF_ENOMEM, "out of memory");
  if (!st && rows > 0) st = t->be->download(t->dev, tr, df_data(t), rows);
  for (int64_t r = 0; !st && r < rows; r++)
    if (!(df_diffuser_sigma2_host(D, tr[r]) > 0.0) || !isfinite(tr[r]))
      st = df_fail(DF_EARG, "times must be finite with sigma(t) > 0 (row %lld: t = %g)", (long long)r + 1, tr[r]);
  if (!st) {
#pragma omp parallel for schedule(static) if (rows > 256)
    for (int64_t r = 0; r < rows; r++)
      df_group_dsm_pair_row(G, D, d + r * n, tr[r], seed, stream, r, xs + r * n, ss + r * n);
  }
  if (!st) st = rows_out(out_x, x0, xs, rows, n);
  if (!st) st = rows_out(out_s, x0, ss, rows, n);
  free(d);
  free(tr);
  free(xs);
  free(ss);
  return st;
}
