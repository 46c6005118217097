/* many_sites: USDT probes with 512 call sites each, for the attach-time benchmark of bench_trace.py.
 *
 *   bench:shared    512 sites whose argument is the same register at every site (one argument spec)
 *   bench:distinct  512 sites whose argument is a different constant at each site (512 specs: the
 *                   worst case for a tracer that generates code per distinct argument spec)
 *
 * A `switch` keeps every site reachable, so the compiler cannot merge them.
 *
 *   many_sites [ROUNDS]   run every site ROUNDS times (default 1) and exit */
#include <stdio.h>
#include <stdlib.h>
#include <sys/sdt.h>

#define SHARED(k)    case k: DTRACE_PROBE1(bench, shared, value); break;
#define DISTINCT(k)  case k: DTRACE_PROBE1(bench, distinct, k); break;
#define X4(m, k)     m(k) m(k + 1) m(k + 2) m(k + 3)
#define X16(m, k)    X4(m, k) X4(m, k + 4) X4(m, k + 8) X4(m, k + 12)
#define X64(m, k)    X16(m, k) X16(m, k + 16) X16(m, k + 32) X16(m, k + 48)
#define X512(m)      X64(m, 0) X64(m, 64) X64(m, 128) X64(m, 192) X64(m, 256) X64(m, 320) X64(m, 384) \
                     X64(m, 448)

__attribute__((noinline)) static void fire_shared(volatile int which, long value)
{
    switch (which) {
        X512(SHARED)
    }
}

__attribute__((noinline)) static void fire_distinct(volatile int which)
{
    switch (which) {
        X512(DISTINCT)
    }
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
    for (long r = 0; r < rounds; r++)
        for (int k = 0; k < 512; k++) {
            fire_shared(k, r);
            fire_distinct(k);
        }
    printf("many_sites: fired %ld rounds of 2 x 512 sites\n", rounds);
    return 0;
}
