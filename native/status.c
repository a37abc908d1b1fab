/* status.c: the core's error message buffer (see status.h). */
#include <stdarg.h>
#include <stdio.h>
#include "status.h"

static char errbuf[512];

int df_fail(int code, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(errbuf, sizeof errbuf, fmt, ap);
  va_end(ap);
  return code;
}

const char *df_errmsg(void) { return errbuf[0] ? errbuf : "unknown error"; }
