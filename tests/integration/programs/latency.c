/* Functions and probe pairs with known durations, for latency tests.
 *   latency sleeps MS...     calls sleep_ms(ms) for each argument (a uprobe/uretprobe target)
 *   latency recurse DEPTH MS calls nest(DEPTH, MS): each level sleeps MS before recursing
 *   latency pairs THREADS N  THREADS threads each run N requests: app:request__start(id) ... sleep
 *                            (id % 4 + 1) ms ... app:request__done(id, status); ids interleave
 *   latency burst N          fires app:burst(i) N times as fast as possible
 * Every mode waits for one byte on stdin first, so a tracer can attach before anything happens. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/sdt.h>

__attribute__((noinline)) int sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
    return (int)ms;
}

__attribute__((noinline)) long nest(long depth, long ms)
{
    sleep_ms(ms);
    if (depth <= 1)
        return 1;
    long r = nest(depth - 1, ms) + 1;
    __asm__ volatile("" ::: "memory"); /* keep the recursion a real call, not a tail call */
    return r;
}

static long per_thread;
static long next_id;

static void *worker(void *arg)
{
    (void)arg;
    for (long i = 0; i < per_thread; i++) {
        long id = __atomic_fetch_add(&next_id, 1, __ATOMIC_SEQ_CST);
        DTRACE_PROBE1(app, request__start, id);
        sleep_ms(id % 4 + 1);
        int status = id % 5 == 0 ? 500 : 200;
        DTRACE_PROBE2(app, request__done, id, status);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char go;
    if (argc < 2) {
        fprintf(stderr, "usage: latency sleeps MS... | recurse DEPTH MS | pairs THREADS N | burst N\n");
        return 2;
    }
    if (read(0, &go, 1) != 1)
        return 1;
    if (!strcmp(argv[1], "sleeps")) {
        for (int i = 2; i < argc; i++)
            sleep_ms(atol(argv[i]));
    } else if (!strcmp(argv[1], "recurse")) {
        nest(atol(argv[2]), atol(argv[3]));
    } else if (!strcmp(argv[1], "pairs")) {
        long threads = atol(argv[2]);
        per_thread = atol(argv[3]);
        pthread_t tids[64];
        for (long t = 0; t < threads && t < 64; t++)
            pthread_create(&tids[t], NULL, worker, NULL);
        for (long t = 0; t < threads && t < 64; t++)
            pthread_join(tids[t], NULL);
    } else if (!strcmp(argv[1], "burst")) {
        long n = atol(argv[2]);
        for (long i = 0; i < n; i++)
            DTRACE_PROBE1(app, burst, i);
    }
    return 0;
}
