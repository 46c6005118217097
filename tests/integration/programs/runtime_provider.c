/* A C program on usdtkit's libstapsdt: declares provider `rdv_c` at run time, loads it and fires
 * `tick(i, 10 * i)` N times at once, saying on stderr whether a tracer had enabled the probe when the
 * load returned. */
#include <stdio.h>
#include <stdlib.h>

#include "libstapsdt.h"

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 10;
  SDTProvider_t *provider = providerInit("rdv_c");
  SDTProbe_t *tick = providerAddProbe(provider, "tick", 2, int64, uint64);
  if (!tick || providerLoad(provider) != 0) {
    fprintf(stderr, "%s\n", provider->error ? provider->error : "cannot declare");
    return 1;
  }
  fprintf(stderr, "enabled at load: %d\n", probeIsEnabled(tick));
  for (int i = 0; i < n; i++)
    probeFire(tick, (int64_t)i, (uint64_t)i * 10);
  providerDestroy(provider);
  return 0;
}
