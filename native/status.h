/* status.h: how the core reports failure. Core functions return a status code and leave a
 * message behind (df_errmsg); the Lua binding turns both into a Lua error. Nothing in the core
 * exits or aborts. The message buffer is per process: one Lua state drives the core at a time. */
#ifndef DF_STATUS_H
#define DF_STATUS_H

enum { DF_OK = 0, DF_EARG, DF_ENOMEM, DF_EDEVICE, DF_EIO, DF_ESTATE };

/* record a message (printf-style) and return code, so callers write `return df_fail(...)` */
int df_fail(int code, const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 2, 3)))
#endif
  ;
const char *df_errmsg(void);

#endif
