/* checkpoint.c: the checkpoint file of a network (with, optionally, its Adam state) and the
 * random-stream state, so that training resumes bitwise. The format (all little-endian):
 *
 *   "DIFFUSE\0"                magic, 8 bytes
 *   u32 version                1
 *   u32 flags                  bit 0: an optimizer section follows the network
 *   u64 seed, u64 stream       the random-stream state when saved
 *   u32 n, n bytes             the architecture, as text: "kind=mlp dim=1 act=silu hidden=8,8,8"
 *                              or "kind=time_embedded dim=1 act=silu hidden=8 embed=256 scale=30"
 *   u32 n, n bytes             the optimizer, as text (when flag 0): "adam lr=... b1=... b2=...
 *                              eps=... weight_decay=... t=..." (numbers as %.17g)
 *   u32 count, then per tensor: u16 name length, name, u32 ndim, i64 shape[ndim], f32 data
 *                              ("params", "fixed" for the time-embedded net, "adam.m", "adam.v")
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

static void arch_text(const df_net *n, char *s, size_t len)
{
  const df_netdesc *d = &n->d;
  int pos;
  if (d->kind == DF_NET_MLP) {
    pos = snprintf(s, len, "kind=mlp dim=%d act=%s hidden=", d->dim, act_names[d->act]);
    for (int l = 0; l + 1 < d->nlin && pos < (int)len; l++)
      pos += snprintf(s + pos, len - (size_t)pos, l ? ",%d" : "%d", d->out[l]);
  } else {
    snprintf(s, len, "kind=time_embedded dim=%d act=%s hidden=%d embed=%d scale=%.17g", d->dim,
             act_names[d->act], d->out[0], d->embed, n->scale);
  }
}

int df_save(const char *path, const df_net *n, const df_adam *o, uint64_t seed, uint64_t stream)
{
  buf b = { NULL, 0, 0, 0 };
  char text[1024], tmp[4096];
  float *hp = NULL, *hf = NULL, *hm = NULL, *hv = NULL;
  int st;
  if (o && o->n != n->d.nparams)
    return df_fail(DF_EARG, "the optimizer does not belong to this network");
  if ((st = fetch(n->be, n->dev, n->params, n->d.nparams, &hp)) ||
      (st = fetch(n->be, n->dev, n->fixed, n->d.nfixed, &hf)) ||
      (o && (st = fetch(o->be, o->dev, o->m, o->n, &hm))) ||
      (o && (st = fetch(o->be, o->dev, o->v, o->n, &hv))))
    goto done;
  put(&b, MAGIC, 8);
  put_u(&b, VERSION, 4);
  put_u(&b, o ? 1u : 0u, 4);
  put_u(&b, seed, 8);
  put_u(&b, stream, 8);
  arch_text(n, text, sizeof text);
  put_text(&b, text);
  if (o) {
    snprintf(text, sizeof text, "adam lr=%.17g b1=%.17g b2=%.17g eps=%.17g weight_decay=%.17g t=%lld",
             o->lr, o->b1, o->b2, o->eps, o->wd, (long long)o->t);
    put_text(&b, text);
  }
  put_u(&b, (uint64_t)(1 + (n->d.nfixed > 0) + (o ? 2 : 0)), 4);
  put_tensor(&b, "params", hp, n->d.nparams);
  if (n->d.nfixed > 0) put_tensor(&b, "fixed", hf, n->d.nfixed);
  if (o) {
    put_tensor(&b, "adam.m", hm, o->n);
    put_tensor(&b, "adam.v", hv, o->n);
  }
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
  free(hp); free(hf); free(hm); free(hv);
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

static int parse_arch(const char *text, df_netdesc *d, double *scale, const char *path)
{
  const char *kind = field(text, "kind"), *dim = field(text, "dim"), *act = field(text, "act"),
             *hid = field(text, "hidden");
  int a = -1;
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

int df_load(const char *path, df_net *n, df_adam *o, int *has_opt, uint64_t *seed,
            uint64_t *stream, const df_backend *be, int dev)
{
  int st;
  unsigned char *data = NULL;
  char text[1024], otext[1024];
  *has_opt = 0;
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
  if (!get_text(&r, text, sizeof text) || ((flags & 1) && !get_text(&r, otext, sizeof otext))) {
    st = df_fail(DF_EIO, "'%s' is truncated", path);
    goto done;
  }
  df_netdesc d;
  double scale = 1.0;
  if ((st = parse_arch(text, &d, &scale, path))) goto done;
  uint32_t count = (uint32_t)get_u(&r, 4);
  uint32_t want = 1 + (d.nfixed > 0) + ((flags & 1) ? 2 : 0);
  if (r.bad || count != want) {
    st = df_fail(DF_EIO, "'%s': expected %u tensors, found %u", path, want, count);
    goto done;
  }
  if ((st = df_net_alloc(n, &d, d.kind == DF_NET_TEMB ? scale : 1.0, be, dev))) goto done;
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
      if (end == t || steps < 0 || steps > DF_MAX_STEPS) /* (the counter must not overflow) */
        st = df_fail(DF_EIO, "'%s': the optimizer's step count is out of range", path);
      else if (!(st = get_tensor(&r, "adam.m", o->n, be, dev, o->m, path)))
        st = get_tensor(&r, "adam.v", o->n, be, dev, o->v, path);
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
    *has_opt = 0;
    df_net_release(n);
    st = df_fail(DF_EIO, "'%s' has trailing or missing bytes", path);
    goto done;
  }
  st = DF_OK;
done:
  free(data);
  return st;
}
