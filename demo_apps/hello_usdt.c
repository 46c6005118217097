/* hello_usdt: the smallest demo of USDT probes. Greets N times, firing hello:greet (with the count and
 * the name as a string) and hello:tick (count, squared count) at each greeting.
 *
 *   hello_usdt [N] [NAME]      default: 10 greetings of "world", 20 ms apart
 *
 * Both probes carry semaphores, so `usdtkit` (or any tracer using the kernel's reference counter)
 * switches the argument preparation on only while it traces. */
#define _SDT_HAS_SEMAPHORES 1
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/sdt.h>

__extension__ unsigned short hello_greet_semaphore __attribute__((unused, section(".probes")));
__extension__ unsigned short hello_tick_semaphore __attribute__((unused, section(".probes")));

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: hello_usdt [N] [NAME]\nGreets NAME N times, firing USDT probes hello:greet and hello:tick.\n");
        return 0;
    }
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 10;
    const char *name = argc > 2 ? argv[2] : "world";
    struct timespec pause = {0, 20 * 1000 * 1000};
    for (long i = 1; i <= n; i++) {
        if (hello_greet_semaphore)
            DTRACE_PROBE2(hello, greet, i, name);
        DTRACE_PROBE2(hello, tick, i, i * i);
        printf("hello %s #%ld\n", name, i);
        fflush(stdout);
        nanosleep(&pause, NULL);
    }
    return 0;
}
