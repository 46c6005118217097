/* sdt_bench: the target program of bench/bench_trace.py.
 *
 *   sdt_bench loop N    wait for a line on stdin, fire bench:hit N times in a tight loop, then print
 *                       "n=N elapsed_ns=T ns_per_iter=X" and exit (per-hit cost)
 *   sdt_bench burst N   same with bench:event (one argument: the iteration number), as fast as possible
 *                       (events per second delivered to a tracer)
 *   sdt_bench idle      every millisecond fire bench:tick and call bench_func(); exit when stdin closes
 *                       (time to attach, first event)
 *
 * Built twice by bench_trace.py: with the default 1-byte `nop` of <sys/sdt.h> at each probe site, and
 * with -DSDT_NOP5, which makes every site a 5-byte `nopl 0x0(%rax,%rax,1)` (the kernel can optimise a
 * uprobe on a 5-byte nop into a call instead of a breakpoint trap).  No probe has a semaphore, so every
 * tracer attaches the same way. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/sdt.h>

#ifdef SDT_NOP5
/* <sys/sdt.h> defines _SDT_NOP unconditionally, but only expands it where a probe is written, so
 * redefining it after the include changes every site below.  Spelled as bytes: the assembler would
 * shorten `nopl 0x0(%rax,%rax,1)` to the 4-byte `nopl (%rax,%rax,1)` (and no commas may appear here). */
#undef _SDT_NOP
#define _SDT_NOP .byte 0x0f; .byte 0x1f; .byte 0x44; .byte 0x00; .byte 0x00 /* nopl 0x0(%rax,%rax,1) */
#endif

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The uprobe/uretprobe target of the latency benchmarks: not inlined, not removed. */
__attribute__((noinline)) long bench_func(long x)
{
    __asm__ volatile("" : "+r"(x));
    return x * 2 + 1;
}

static int wait_for_go(void)
{
    char line[16];
    return fgets(line, sizeof(line), stdin) != NULL;
}

static void report(const char *what, long n, long long elapsed)
{
    printf("%s n=%ld elapsed_ns=%lld ns_per_iter=%.3f\n", what, n, elapsed, n ? (double)elapsed / n : 0.0);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: sdt_bench loop N | burst N | idle\n");
        return 2;
    }
    long n = argc > 2 ? strtol(argv[2], NULL, 10) : 0;
    printf("ready pid=%ld\n", (long)getpid());
    fflush(stdout);
    if (!strcmp(argv[1], "loop")) {
        if (!wait_for_go())
            return 1;
        long long start = now_ns();
        for (long i = 0; i < n; i++)
            DTRACE_PROBE1(bench, hit, i);
        report("loop", n, now_ns() - start);
    } else if (!strcmp(argv[1], "burst")) {
        if (!wait_for_go())
            return 1;
        long long start = now_ns();
        for (long i = 0; i < n; i++)
            DTRACE_PROBE1(bench, event, i);
        report("burst", n, now_ns() - start);
    } else if (!strcmp(argv[1], "idle")) {
        struct pollfd in = {.fd = 0, .events = POLLIN};
        long ticks = 0, sum = 0;
        for (;;) {
            ticks++;
            DTRACE_PROBE1(bench, tick, ticks);
            sum += bench_func(ticks);
            if (poll(&in, 1, 1) > 0) {
                char buf[64];
                if (read(0, buf, sizeof(buf)) <= 0)
                    break;
            }
        }
        printf("idle ticks=%ld sum=%ld\n", ticks, sum);
    } else {
        fprintf(stderr, "sdt_bench: unknown mode %s\n", argv[1]);
        return 2;
    }
    return 0;
}
