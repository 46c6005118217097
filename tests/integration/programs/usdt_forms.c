/* Argument locations of every x86_64 form, for exactness tests.  Build with
 *   -O2 -DSTAP_SDT_ARG_CONSTRAINT=m   (memory operands: sym(%rip), N(%reg), (%reg), N(%base,%index,S))
 * Fires demo:mem and demo:konst N times after one byte arrives on stdin; exit status 0. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/sdt.h>

struct record { int64_t id; int32_t weight; uint16_t flags; int8_t level; };

int64_t global_total = -5;                    /* read as sym(%rip) */
int32_t table[16] = {0, -10, 20, -30, 40, -50, 60, -70, 80, -90, 100, -110, 120, -130, 140, -150};

__attribute__((noinline)) void observe(struct record *rec, long index)
{
    global_total += rec->weight;
    DTRACE_PROBE6(demo, mem, global_total, rec->id, rec->weight, rec->flags, rec->level, table[index]);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10;
    char go;
    if (read(0, &go, 1) != 1)
        return 1;
    struct record *recs = calloc((size_t)n, sizeof(*recs));
    for (long i = 0; i < n; i++) {
        recs[i].id = 1000000000000LL * i;
        recs[i].weight = (int32_t)(-7 * i);
        recs[i].flags = (uint16_t)(65535 - i);
        recs[i].level = (int8_t)(i - 3);
        observe(&recs[i], i % 16);
    }
    free(recs);
    return 0;
}
