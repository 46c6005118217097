/* Probes whose values a test knows, for keys of several fields.  Every mode waits for one byte on stdin
 * first (so a tracer can attach), prints "done" when it has fired everything, then waits for stdin to
 * close (so its stacks can still be named).
 *   keys names N NAME...   fires keys:name(i, NAME) N times, NAME chosen unevenly; prints "NAME COUNT"
 *   keys stack COMM N      names itself COMM, fires keys:stack(i) N times from via_alpha() when COMM
 *                          starts with 'a', from via_beta() otherwise
 *   keys requests N        N requests one after the other: keys:start(id, route), a sleep known from
 *                          the route, keys:done(id, status); routes cycle "/fast" (1 ms), "/slow"
 *                          (12 ms) and a pointer that cannot be read (1 ms); status is 200 for requests
 *                          0-2, 404 for 3-5, 200 for 6-8...
 *   keys lostkey           keys:lost_start(KEY) with KEY in a page never touched (its read fails), then
 *                          keys:done(0, 200): a done whose key is 0
 *   keys flood N           N starts keys:start(i, "/flood"), then N dones keys:done(i, 200)
 *   keys threads N         two threads at once, each with ids 0..N-1 of its own: keys:start(id, "/tT"),
 *                          a sleep of 1 ms (thread 0) or 12 ms (thread 1), keys:done(id, T) */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/sdt.h>
#include <time.h>
#include <unistd.h>

/* Never written or read by the program: its pages are not present, so a tracer's read fails. */
char untouched[1 << 20];
long untouched_key[1 << 16];

static void sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

__attribute__((noinline)) void fire_stack(long i)
{
    DTRACE_PROBE1(keys, stack, i);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void via_alpha(long n)
{
    for (long i = 0; i < n; i++)
        fire_stack(i);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void via_beta(long n)
{
    for (long i = 0; i < n; i++)
        fire_stack(i);
    __asm__ volatile("" ::: "memory");
}

static void names(long n, int count, char **name)
{
    long fired[64] = {0};
    for (long i = 0; i < n; i++) {
        int which = (int)((i * i + i / 3) % count);
        DTRACE_PROBE2(keys, name, i, name[which]);
        fired[which]++;
    }
    for (int k = 0; k < count; k++)
        printf("%s %ld\n", name[k], fired[k]);
}

static void requests(long n)
{
    static const char *const routes[] = {"/fast", "/slow", untouched + (1 << 19)};
    static const long sleeps[] = {1, 12, 1};
    for (long id = 0; id < n; id++) {
        const char *route = routes[id % 3];
        long status = (id / 3) % 2 ? 404 : 200;
        DTRACE_PROBE2(keys, start, id, route);
        sleep_ms(sleeps[id % 3]);
        DTRACE_PROBE2(keys, done, id, status);
    }
}

static long per_thread;

static void *worker(void *arg)
{
    long t = (long)arg;
    const char *route = t ? "/t1" : "/t0";
    for (long id = 0; id < per_thread; id++) {
        DTRACE_PROBE2(keys, start, id, route);
        sleep_ms(t ? 12 : 1);
        DTRACE_PROBE2(keys, done, id, t);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char go;
    if (argc < 2) {
        fprintf(stderr, "usage: keys names N NAME... | stack COMM N | requests N | lostkey | flood N | threads N\n");
        return 2;
    }
    if (read(0, &go, 1) != 1)
        return 1;
    if (!strcmp(argv[1], "names") && argc > 3 && argc - 3 <= 64) {
        names(atol(argv[2]), argc - 3, argv + 3);
    } else if (!strcmp(argv[1], "stack") && argc == 4) {
        prctl(PR_SET_NAME, argv[2]);
        if (argv[2][0] == 'a')
            via_alpha(atol(argv[3]));
        else
            via_beta(atol(argv[3]));
    } else if (!strcmp(argv[1], "requests") && argc == 3) {
        requests(atol(argv[2]));
    } else if (!strcmp(argv[1], "lostkey")) {
        DTRACE_PROBE1(keys, lost_start, untouched_key[1 << 15]);
        sleep_ms(1);
        DTRACE_PROBE2(keys, done, 0L, 200L);
    } else if (!strcmp(argv[1], "flood") && argc == 3) {
        long n = atol(argv[2]);
        for (long i = 0; i < n; i++)
            DTRACE_PROBE2(keys, start, i, "/flood");
        for (long i = 0; i < n; i++)
            DTRACE_PROBE2(keys, done, i, 200L);
    } else if (!strcmp(argv[1], "threads") && argc == 3) {
        pthread_t threads[2];
        per_thread = atol(argv[2]);
        for (long t = 0; t < 2; t++)
            pthread_create(&threads[t], NULL, worker, (void *)t);
        for (long t = 0; t < 2; t++)
            pthread_join(threads[t], NULL);
    } else {
        fprintf(stderr, "keys: unknown mode %s\n", argv[1]);
        return 2;
    }
    printf("done\n");
    fflush(stdout);
    while (read(0, &go, 1) > 0)
        ;
    return 0;
}
