/* many_sites: two USDT probes with SITES call sites each (default 512; 64, 128, ... 512 with
 * -DSITES=N), for the attach-time benchmark of bench/bench_trace.py.
 *
 *   bench:shared    SITES sites whose argument is the same register at every site (one argument spec)
 *   bench:distinct  SITES sites whose argument is a different constant at each site (SITES specs: the
 *                   worst case for a tracer that generates code per distinct argument spec)
 *
 * A `switch` keeps every site reachable, and each case differs, so the compiler cannot merge them.
 *
 *   many_sites [ROUNDS]   run every site ROUNDS times (default 1) and exit */
#include <stdio.h>
#include <stdlib.h>
#include <sys/sdt.h>

#ifndef SITES
#define SITES 512
#endif
#if SITES % 64 || SITES < 64 || SITES > 512
#error SITES must be a multiple of 64 between 64 and 512
#endif

#define SHARED(k)    case k: DTRACE_PROBE1(bench, shared, value); last_site = k; break;
#define DISTINCT(k)  case k: DTRACE_PROBE1(bench, distinct, k); break;
#define X4(m, k)     m(k) m(k + 1) m(k + 2) m(k + 3)
#define X16(m, k)    X4(m, k) X4(m, k + 4) X4(m, k + 8) X4(m, k + 12)
#define X64(m, k)    X16(m, k) X16(m, k + 16) X16(m, k + 32) X16(m, k + 48)

/* Written by every `shared` site with its own number, so that no two sites are the same code. */
static volatile int last_site;

__attribute__((noinline)) static void fire_shared(volatile int which, long value)
{
    switch (which) {
        X64(SHARED, 0)
#if SITES > 64
        X64(SHARED, 64)
#endif
#if SITES > 128
        X64(SHARED, 128)
#endif
#if SITES > 192
        X64(SHARED, 192)
#endif
#if SITES > 256
        X64(SHARED, 256)
#endif
#if SITES > 320
        X64(SHARED, 320)
#endif
#if SITES > 384
        X64(SHARED, 384)
#endif
#if SITES > 448
        X64(SHARED, 448)
#endif
    }
}

__attribute__((noinline)) static void fire_distinct(volatile int which)
{
    switch (which) {
        X64(DISTINCT, 0)
#if SITES > 64
        X64(DISTINCT, 64)
#endif
#if SITES > 128
        X64(DISTINCT, 128)
#endif
#if SITES > 192
        X64(DISTINCT, 192)
#endif
#if SITES > 256
        X64(DISTINCT, 256)
#endif
#if SITES > 320
        X64(DISTINCT, 320)
#endif
#if SITES > 384
        X64(DISTINCT, 384)
#endif
#if SITES > 448
        X64(DISTINCT, 448)
#endif
    }
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
    for (long r = 0; r < rounds; r++)
        for (int k = 0; k < SITES; k++) {
            fire_shared(k, r);
            fire_distinct(k);
        }
    printf("many_sites: fired %ld rounds of 2 x %d sites\n", rounds, SITES);
    return 0;
}
