/* checkpoint.c: the checkpoint file of a network (with, optionally, its Adam state) and the
 * random-stream state, so that training resumes bitwise. The format (all little-endian):
 *
 *   "DIFFUSE\0"                magic, 8 bytes
 *   u32 version                1
 *   u32 flags                  bit 0: an optimizer section follows the network; bit 1: the
 *                              optimizer's weight EMA follows it (tensor "ema")
 *   u64 seed, u64 stream       the random-stream state when saved
 *   u32 n, n bytes             the architecture, as text: "kind=mlp dim=1 act=silu hidden=8,8,8"
 *                              or "kind=time_embedded dim=1 act=silu hidden=8 embed=256 scale=30",
 *                              or for a composed net "kind=net" and, from the next line on, its
 *                              graph's text (native/graph.c); " output=noise" etc. when the
 *                              output convention is not the default 'scaled' 
 *   u32 n, n bytes             the optimizer, as text (when flag 0): "adam lr=... b1=... b2=...
 *                              eps=... weight_decay=... t=..." (numbers as %.17g), then, when
 *                              set, " warmup=... total=... decay=... min_lr=..." (its lr
 *                              schedule) and " ema=..." (its EMA's decay)
 *   u32 count, then per tensor: u16 name length, name, u32 ndim, i64 shape[ndim], f32 data
 *                              ("params", "fixed" for nets with Fourier frequencies, "adam.m",
 *                              "adam.v", "ema")
 *   u32 crc32                  IEEE CRC-32 of every byte before it
 *
 * Files are written to a temporary name and renamed into place, so a crash never leaves a
 * half-written checkpoint under the real name. */
#define _POSIX_C_SOURCE 200112L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "status.h"
#include "nn.h"
#include "graph.h"

static const char MAGIC[8] = { 'D', 'I', 'F', 'F', 'U', 'S', 'E', '\0' };
#define VERSION 1u
#define MAX_FILE ((int64_t)1 << 36) /* 64 GiB: anything larger is not ours */

static const char *const act_names[] = { "silu", "relu", "tanh", "gelu" };

/* ---- CRC-32 (IEEE 802.3, reflected 0xEDB88320) --------------------------------------------- */

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
  static uint32_t table[256];
  static int ready = 0;
  if (!ready) {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = 1;
  }
  crc = ~crc;
  for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

/* ---- a growing byte buffer, little-endian --------------------------------------------------- */

typedef struct {
  unsigned char *p;
  size_t len, cap;
  int oom;
} buf;

static void put(buf *b, const void *src, size_t n)
{
  if (b->oom) return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    unsigned char *q = (unsigned char *)realloc(b->p, cap);
    if (!q) { b->oom = 1; return; }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, src, n);
  b->len += n;
}

static void put_u(buf *b, uint64_t v, int bytes)
{
  unsigned char t[8];
  for (int i = 0; i < bytes; i++) t[i] = (unsigned char)(v >> (8 * i));
  put(b, t, (size_t)bytes);
}

static void put_text(buf *b, const char *s)
{
  put_u(b, (uint64_t)strlen(s), 4);
  put(b, s, strlen(s));
}

static void put_tensor(buf *b, const char *name, const float *host, int64_t n)
{
  put_u(b, (uint64_t)strlen(name), 2);
  put(b, name, strlen(name));
  put_u(b, 1, 4);
  put_u(b, (uint64_t)n, 8);
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &host[i], 4);
    put_u(b, u, 4);
  }
}

/* device floats to a host copy */
static int fetch(const df_backend *be, int dev, const float *src, int64_t n, float **host)
{
  *host = (float *)malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  if (!*host) return df_fail(DF_ENOMEM, "out of memory");
  return n > 0 ? be->download(dev, *host, src, n) : DF_OK;
}

/* the architecture's text (malloc'd; NULL when out of memory) */
static char *arch_text(const df_net *n)
{
  const df_netdesc *d = &n->d;
  char out[32] = "";
  if (n->output != DF_OUT_SCALED) snprintf(out, sizeof out, " output=%s", df_output_names[n->output]);
  size_t len = 1024 + (d->kind == DF_NET_GRAPH ? strlen(d->graph->text) : 0);
  char *s = (char *)malloc(len);
  if (!s) return NULL;
  int pos;
  if (d->kind == DF_NET_GRAPH) {
    snprintf(s, len, "kind=net%s\n%s", out, d->graph->text);
  } else if (d->kind == DF_NET_MLP) {
    pos = snprintf(s, len, "kind=mlp dim=%d act=%s hidden=", d->dim, act_names[d->act]);
    for (int l = 0; l + 1 < d->nlin && pos < (int)len; l++)
      pos += snprintf(s + pos, len - (size_t)pos, l ? ",%d" : "%d", d->out[l]);
    snprintf(s + pos, len - (size_t)pos, "%s", out);
  } else {
    snprintf(s, len, "kind=time_embedded dim=%d act=%s hidden=%d embed=%d scale=%.17g%s", d->dim,
             act_names[d->act], d->out[0], d->embed, n->scale, out);
  }
  return s;
}

int df_save(const char *path, const df_net *n, const df_adam *o, const df_net *ema, uint64_t seed,
            uint64_t stream)
{
  buf b = { NULL, 0, 0, 0 };
  char text[1024], tmp[4096], *arch = NULL;
  float *hp = NULL, *hf = NULL, *hm = NULL, *hv = NULL, *he = NULL;
  int st;
  if (o && o->n != n->d.nparams)
    return df_fail(DF_EARG, "the optimizer does not belong to this network");
  if (!o) ema = NULL;
  if (ema && ema->d.nparams != n->d.nparams)
    return df_fail(DF_EARG, "the EMA network does not belong to this network");
  if ((st = fetch(n->be, n->dev, n->params, n->d.nparams, &hp)) ||
      (st = fetch(n->be, n->dev, n->fixed, n->d.nfixed, &hf)) ||
      (o && (st = fetch(o->be, o->dev, o->m, o->n, &hm))) ||
      (o && (st = fetch(o->be, o->dev, o->v, o->n, &hv))) ||
      (ema && (st = fetch(ema->be, ema->dev, ema->params, ema->d.nparams, &he))))
    goto done;
  put(&b, MAGIC, 8);
  put_u(&b, VERSION, 4);
  put_u(&b, (o ? 1u : 0u) | (ema ? 2u : 0u), 4);
  put_u(&b, seed, 8);
  put_u(&b, stream, 8);
  if (!(arch = arch_text(n))) { st = df_fail(DF_ENOMEM, "out of memory"); goto done; }
  put_text(&b, arch);
  if (o) {
    int pos = snprintf(text, sizeof text, "adam lr=%.17g b1=%.17g b2=%.17g eps=%.17g weight_decay=%.17g t=%lld",
                       o->lr, o->b1, o->b2, o->eps, o->wd, (long long)o->t);
    const df_schedule *sc = &o->sched;
    if (sc->warmup > 0 || sc->decay != DF_DECAY_NONE)
      pos += snprintf(text + pos, sizeof text - (size_t)pos, " warmup=%lld total=%lld decay=%d min_lr=%.17g",
                      (long long)sc->warmup, (long long)sc->total, sc->decay, sc->min_lr);
    if (o->ema > 0.0) snprintf(text + pos, sizeof text - (size_t)pos, " ema=%.17g", o->ema);
    put_text(&b, text);
  }
  put_u(&b, (uint64_t)(1 + (n->d.nfixed > 0) + (o ? 2 : 0) + (ema ? 1 : 0)), 4);
  put_tensor(&b, "params", hp, n->d.nparams);
  if (n->d.nfixed > 0) put_tensor(&b, "fixed", hf, n->d.nfixed);
  if (o) {
    put_tensor(&b, "adam.m", hm, o->n);
    put_tensor(&b, "adam.v", hv, o->n);
  }
  if (ema) put_tensor(&b, "ema", he, ema->d.nparams);
  put_u(&b, crc32_update(0, b.p, b.len), 4);
  if (b.oom) { st = df_fail(DF_ENOMEM, "out of memory"); goto done; }
  /* write beside the target, then rename over it */
  snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) { /* (named as given: the temporary file is ours, not the caller's) */
    st = df_fail(DF_EIO, "cannot write '%s': %s", path, strerror(errno));
    goto done;
  }
  int bad = fwrite(b.p, 1, b.len, f) != b.len;
  bad |= fflush(f) != 0;
  bad |= fsync(fileno(f)) != 0;
  bad |= fclose(f) != 0;
  if (bad || rename(tmp, path) != 0) {
    st = df_fail(DF_EIO, "cannot write '%s': %s", path, strerror(errno));
    remove(tmp);
    goto done;
  }
  st = DF_OK;
done:
  free(b.p);
  free(arch);
  free(hp); free(hf); free(hm); free(hv); free(he);
  return st;
}

/* ---- reading ---------------------------------------------------------------------------------- */

typedef struct {
  const unsigned char *p;
  size_t len, pos;
  int bad;
} rd;

static uint64_t get_u(rd *r, int bytes)
{
  uint64_t v = 0;
  if (r->pos + (size_t)bytes > r->len) { r->bad = 1; return 0; }
  for (int i = 0; i < bytes; i++) v |= (uint64_t)r->p[r->pos + (size_t)i] << (8 * i);
  r->pos += (size_t)bytes;
  return v;
}

static int get_text(rd *r, char *s, size_t cap)
{
  uint64_t n = get_u(r, 4);
  if (r->bad || n >= cap || r->pos + n > r->len) { r->bad = 1; return 0; }
  if (memchr(r->p + r->pos, 0, (size_t)n)) { r->bad = 1; return 0; } /* (text: no zero bytes) */
  memcpy(s, r->p + r->pos, (size_t)n);
  s[n] = '\0';
  r->pos += (size_t)n;
  return 1;
}

/* the value of "key=..." in a line of text */
static const char *field(const char *text, const char *key)
{
  size_t k = strlen(key);
  for (const char *p = text; (p = strstr(p, key)) != NULL; p += k)
    if ((p == text || p[-1] == ' ') && p[k] == '=') return p + k + 1;
  return NULL;
}

/* the output convention of the architecture's first line ('scaled' when absent) */
static int parse_output(const char *text, int *output, const char *path)
{
  const char *o = field(text, "output"), *eol = strchr(text, '\n');
  *output = DF_OUT_SCALED;
  if (!o || (eol && o > eol)) return DF_OK;
  for (int i = 0; i < DF_NOUT; i++) {
    size_t k = strlen(df_output_names[i]);
    if (strncmp(o, df_output_names[i], k) == 0 && (o[k] == ' ' || o[k] == '\n' || o[k] == '\0')) {
      *output = i;
      return DF_OK;
    }
  }
  return df_fail(DF_EIO, "'%s': unknown output convention in the architecture", path);
}

static int parse_arch(const char *text, df_netdesc *d, double *scale, const char *path)
{
  const char *kind = field(text, "kind"), *dim = field(text, "dim"), *act = field(text, "act"),
             *hid = field(text, "hidden");
  int a = -1;
  if (kind && strncmp(kind, "net", 3) == 0 && (kind[3] == ' ' || kind[3] == '\n')) {
    const char *gt = strchr(text, '\n');
    df_graph *g = NULL;
    if (!gt) return df_fail(DF_EIO, "'%s': the network's graph is missing", path);
    if (df_graph_parse(gt + 1, &g)) {
      char why[512];
      snprintf(why, sizeof why, "%s", df_errmsg()); /* (df_fail writes the buffer it reads) */
      return df_fail(DF_EIO, "'%s': the network's graph is damaged: %s", path, why);
    }
    df_netdesc_graph(d, g); /* (the caller's reference: released after the net takes its own) */
    return DF_OK;
  }
  if (kind && strncmp(kind, "mlp", 3) != 0 && strncmp(kind, "time_embedded", 13) != 0) {
    int k = 0;
    while (kind[k] && kind[k] != ' ' && kind[k] != '\n' && k < 40) k++;
    return df_fail(DF_EIO, "'%s': unknown network kind '%.*s'", path, k, kind);
  }
  if (!kind || !dim || !act || !hid)
    return df_fail(DF_EIO, "'%s': the architecture description is incomplete", path);
  for (int i = 0; i < 4; i++)
    if (strncmp(act, act_names[i], strlen(act_names[i])) == 0) a = i;
  if (a < 0) return df_fail(DF_EIO, "'%s': unknown activation in '%s'", path, text);
  int dm = atoi(dim);
  if (strncmp(kind, "mlp", 3) == 0) {
    int64_t h[DF_MAXLIN];
    int nh = 0;
    for (const char *p = hid; *p && *p != ' ' && nh < DF_MAXLIN; nh++) {
      h[nh] = atoll(p);
      while (*p && *p != ',' && *p != ' ') p++;
      if (*p == ',') p++;
    }
    return df_netdesc_mlp(d, dm, nh, h, a);
  }
  if (strncmp(kind, "time_embedded", 13) == 0) {
    const char *e = field(text, "embed"), *s = field(text, "scale");
    if (!e || !s) return df_fail(DF_EIO, "'%s': the architecture description is incomplete", path);
    *scale = strtod(s, NULL);
    return df_netdesc_temb(d, dm, atoi(hid), atoi(e), a);
  }
  return df_fail(DF_EIO, "'%s': unknown network kind in '%s'", path, text);
}

/* the next tensor, which must be called `name` and hold n floats; into a device buffer */
static int get_tensor(rd *r, const char *name, int64_t n, const df_backend *be, int dev,
                      float *dst, const char *path)
{
  char got[64];
  uint64_t len = get_u(r, 2);
  if (r->bad || len >= sizeof got || r->pos + len > r->len) return df_fail(DF_EIO, "'%s' is truncated", path);
  memcpy(got, r->p + r->pos, (size_t)len);
  got[len] = '\0';
  r->pos += (size_t)len;
  if (strcmp(got, name) != 0)
    return df_fail(DF_EIO, "'%s': expected tensor '%s', found '%s'", path, name, got);
  uint64_t nd = get_u(r, 4), count = 1;
  if (r->bad || nd < 1 || nd > 4) return df_fail(DF_EIO, "'%s': bad shape of '%s'", path, name);
  for (uint64_t i = 0; i < nd; i++) count *= get_u(r, 8);
  if (r->bad || count != (uint64_t)n)
    return df_fail(DF_EIO, "'%s': '%s' has %llu values, the network needs %lld", path, name,
                   (unsigned long long)count, (long long)n);
  if (r->pos + 4 * (size_t)n > r->len) return df_fail(DF_EIO, "'%s' is truncated", path);
  float *host = (float *)malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  if (!host) return df_fail(DF_ENOMEM, "out of memory");
  for (int64_t i = 0; i < n; i++) {
    uint32_t u = (uint32_t)get_u(r, 4);
    memcpy(&host[i], &u, 4);
  }
  int st = n > 0 ? be->upload(dev, dst, host, n) : DF_OK;
  free(host);
  return st;
}

int df_load(const char *path, df_net *n, df_adam *o, int *has_opt, df_net *ema, int *has_ema,
            uint64_t *seed, uint64_t *stream, const df_backend *be, int dev)
{
  int st;
  unsigned char *data = NULL;
  char *text = NULL, otext[1024];
  df_netdesc d; /* (before any goto done: done releases its graph) */
  memset(&d, 0, sizeof d);
  *has_opt = *has_ema = 0;
  /* opened without blocking and checked to be a regular file first: a FIFO would wait for a
     writer forever, a directory would read as nonsense */
  int fd = open(path, O_RDONLY | O_NONBLOCK);
  if (fd < 0) return df_fail(DF_EIO, "cannot open '%s': %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return df_fail(DF_EIO, "cannot read '%s': not a regular file", path);
  }
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    close(fd);
    return df_fail(DF_EIO, "cannot open '%s': %s", path, strerror(errno));
  }
  long size = -1;
  if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
  if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return df_fail(DF_EIO, "cannot read '%s': %s", path, strerror(errno));
  }
  if ((int64_t)size > MAX_FILE) {
    fclose(f);
    return df_fail(DF_EIO, "'%s' is too large to be a checkpoint", path);
  }
  data = (unsigned char *)malloc((size_t)size + 1);
  if (!data) { fclose(f); return df_fail(DF_ENOMEM, "out of memory"); }
  size_t got = fread(data, 1, (size_t)size, f);
  fclose(f);
  rd r = { data, got, 0, 0 };
  if (got < 8 || memcmp(data, MAGIC, 8) != 0) {
    st = df_fail(DF_EIO, "'%s' is not a diffuse checkpoint (wrong magic)", path);
    goto done;
  }
  if (got < 8 + 4 + 4 + 16 + 4 + 4) { st = df_fail(DF_EIO, "'%s' is truncated", path); goto done; }
  r.pos = 8;
  uint32_t version = (uint32_t)get_u(&r, 4);
  if (version != VERSION) {
    st = df_fail(DF_EIO, "'%s' has format version %u; this diffuse reads version %u", path,
                 version, VERSION);
    goto done;
  }
  uint32_t stored = 0;
  for (int i = 0; i < 4; i++) stored |= (uint32_t)data[got - 4 + (size_t)i] << (8 * i);
  if (crc32_update(0, data, got - 4) != stored) {
    st = df_fail(DF_EIO, "'%s' is corrupted or truncated (checksum mismatch)", path);
    goto done;
  }
  r.len = got - 4;
  uint32_t flags = (uint32_t)get_u(&r, 4);
  *seed = get_u(&r, 8);
  *stream = get_u(&r, 8);
  text = (char *)malloc(got + 1);
  if (!text) { st = df_fail(DF_ENOMEM, "out of memory"); goto done; }
  if (!get_text(&r, text, got + 1) || ((flags & 1) && !get_text(&r, otext, sizeof otext))) {
    st = df_fail(DF_EIO, "'%s' is truncated", path);
    goto done;
  }
  double scale = 1.0;
  int output;
  if ((st = parse_output(text, &output, path)) || (st = parse_arch(text, &d, &scale, path))) goto done;
  uint32_t count = (uint32_t)get_u(&r, 4);
  if ((flags & 2) && !(flags & 1)) {
    st = df_fail(DF_EIO, "'%s': an EMA without its optimizer", path);
    goto done;
  }
  uint32_t want = 1 + (d.nfixed > 0) + ((flags & 1) ? 2 : 0) + ((flags & 2) ? 1 : 0);
  if (r.bad || count != want) {
    st = df_fail(DF_EIO, "'%s': expected %u tensors, found %u", path, want, count);
    goto done;
  }
  if ((st = df_net_alloc(n, &d, d.kind == DF_NET_TEMB ? scale : 1.0, be, dev))) goto done;
  n->output = output;
  if ((st = get_tensor(&r, "params", d.nparams, be, dev, n->params, path)) ||
      (d.nfixed > 0 && (st = get_tensor(&r, "fixed", d.nfixed, be, dev, n->fixed, path)))) {
    df_net_release(n);
    goto done;
  }
  if (flags & 1) {
    const char *lr = field(otext, "lr"), *b1 = field(otext, "b1"), *b2 = field(otext, "b2"),
               *eps = field(otext, "eps"), *wd = field(otext, "weight_decay"), *t = field(otext, "t");
    if (strncmp(otext, "adam ", 5) != 0 || !lr || !b1 || !b2 || !eps || !wd || !t) {
      st = df_fail(DF_EIO, "'%s': unreadable optimizer description", path);
    } else if (!(st = df_adam_create(o, n, strtod(lr, NULL), strtod(b1, NULL), strtod(b2, NULL),
                                     strtod(eps, NULL), strtod(wd, NULL)))) {
      char *end;
      long long steps = strtoll(t, &end, 10);
      o->t = steps;
      const char *wu = field(otext, "warmup"), *tot = field(otext, "total"),
                 *dec = field(otext, "decay"), *mlr = field(otext, "min_lr"), *em = field(otext, "ema");
      if (end == t || steps < 0 || steps > DF_MAX_STEPS) /* (the counter must not overflow) */
        st = df_fail(DF_EIO, "'%s': the optimizer's step count is out of range", path);
      else if ((wu || tot || dec || mlr) && (!wu || !tot || !dec || !mlr))
        st = df_fail(DF_EIO, "'%s': the optimizer's schedule is incomplete", path);
      if (!st && wu) {
        df_schedule sc = { atoll(wu), atoll(tot), atoi(dec), strtod(mlr, NULL) };
        if ((st = df_adam_set_schedule(o, &sc))) {
          char why[512];
          snprintf(why, sizeof why, "%s", df_errmsg()); /* (df_fail writes the buffer it reads) */
          st = df_fail(DF_EIO, "'%s': the optimizer's schedule is damaged: %s", path, why);
        }
      }
      if (!st && em) {
        o->ema = strtod(em, NULL);
        if (!(o->ema > 0.0 && o->ema < 1.0))
          st = df_fail(DF_EIO, "'%s': the optimizer's EMA decay is out of range", path);
      }
      if (!st && (flags & 2) && !em)
        st = df_fail(DF_EIO, "'%s': an EMA without its decay", path);
      if (!st && !(st = get_tensor(&r, "adam.m", o->n, be, dev, o->m, path)))
        st = get_tensor(&r, "adam.v", o->n, be, dev, o->v, path);
      if (!st && (flags & 2)) { /* the EMA: a copy of the net with the stored parameters */
        if (!(st = df_net_clone(ema, n)) &&
            (st = get_tensor(&r, "ema", n->d.nparams, be, dev, ema->params, path)))
          df_net_release(ema);
        if (!st) *has_ema = 1;
      }
      if (st) df_adam_release(o);
      else *has_opt = 1;
    }
    if (st) {
      df_net_release(n);
      goto done;
    }
  }
  if (r.bad || r.pos != r.len) {
    if (*has_opt) df_adam_release(o);
    if (*has_ema) df_net_release(ema);
    *has_opt = *has_ema = 0;
    df_net_release(n);
    st = df_fail(DF_EIO, "'%s' has trailing or missing bytes", path);
    goto done;
  }
  st = DF_OK;
done:
  if (d.graph) df_graph_release((df_graph *)d.graph); /* (the net, if any, holds its own) */
  free(text);
  free(data);
  return st;
}
