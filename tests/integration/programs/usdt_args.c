/* Fires demo:args N times with known values of every width, after one byte arrives on stdin
 * (so a tracer can attach first).  Also demo:tick from two call sites, and a semaphore-guarded probe. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>

/* A semaphore makes the probe report whether a tracer is attached (sys/sdt.h names it
 * provider_name_semaphore and puts its address in the note). */
#define DEMO_SEMAPHORE(name) __extension__ unsigned short demo_##name##_semaphore \
    __attribute__((unused, section(".probes")))
DEMO_SEMAPHORE(args);
DEMO_SEMAPHORE(tick);
DEMO_SEMAPHORE(global);
DEMO_SEMAPHORE(guarded);
#define DEMO_GUARDED_ENABLED() __builtin_expect(demo_guarded_semaphore, 0)

int64_t global_counter = 41;
/* Written at run time, so its page is present when a tracer reads it (BPF cannot fault pages in). */
static char label[32];

__attribute__((noinline)) static void fire(int64_t i)
{
    int8_t small = (int8_t)-i;
    uint16_t half = (uint16_t)(60000 + i);
    int32_t word = (int32_t)(-100000 * i);
    uint64_t wide = 0xfffffffffffffff0ULL + (uint64_t)i;
    const char *text = label;
    DTRACE_PROBE6(demo, args, small, half, word, wide, i, text);
    if (i % 2) {
        DTRACE_PROBE1(demo, tick, i);
        __asm__ volatile("" ::: "memory");
    } else {
        DTRACE_PROBE1(demo, tick, i * 1000);
        __asm__ volatile("nop" ::: "memory");
    }
    global_counter++;
    DTRACE_PROBE1(demo, global, global_counter);
}

int main(int argc, char **argv)
{
    int64_t n = argc > 1 ? atoll(argv[1]) : 10;
    char go;
    snprintf(label, sizeof(label), "h\xc3\xa9llo \xe2\x9c\x93");
    if (read(0, &go, 1) != 1)
        return 1;
    for (int64_t i = 0; i < n; i++) {
        fire(i);
        if (DEMO_GUARDED_ENABLED()) {
            DTRACE_PROBE1(demo, guarded, i);
        }
    }
    printf("fired %lld\n", (long long)n);
    return 0;
}
