/* A target for filter tests: every hit reports the values a filter can test, so the test can predict
 * each filter's count from this program's own account instead of from the tracer.
 *
 *   filter_target THREADS BASE
 *
 * Starts THREADS threads; thread K names itself "ftBASE-K", pins itself to one of the allowed CPUs
 * (K modulo their number) and, once one byte arrives on stdin, makes K + 2 hits.  Hit J of thread K
 * has n = BASE + 10 * K + J and fires the USDT probe ft:hit(int32 n - 25, uint64 u(n), const char *name(n))
 * then calls ft_value(n), which returns 3 * n - 40 (a uretprobe target).  u(n) is n for odd n and
 * 0xffffffffffffff00 + n for even n, so unsigned values sit on both sides of 2^63; name(n) is one of
 * four strings (NAMES[n % 4]), of 4 to 70 bytes.
 *
 * On stdout, each thread prints "thread TID CPU COMM" once it is pinned and named (before the byte on
 * stdin, so a test knows every thread before it attaches), then "hit TID CPU COMM ARG0 ARG1 RET" after
 * each hit, NAME last. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/sdt.h>

static const char *const NAMES[] = {
    "beta", "alphabet", "alpha",
    "a-name-longer-than-sixty-four-bytes-which-some-tools-cut-at-64-bytes..",
};
static pthread_barrier_t start;
static long base;
static int cpus[CPU_SETSIZE];
static int ncpus;

__attribute__((noinline)) long long ft_value(long long n)
{
    __asm__ volatile("" ::: "memory");
    return 3 * n - 40;
}

static void *worker(void *arg)
{
    long k = (long)arg;
    char comm[16];
    cpu_set_t one;
    snprintf(comm, sizeof(comm), "ft%ld-%ld", base, k);
    prctl(PR_SET_NAME, comm);
    CPU_ZERO(&one);
    CPU_SET(cpus[k % ncpus], &one);
    if (sched_setaffinity(0, sizeof(one), &one) != 0) {
        perror("sched_setaffinity");
        exit(1);
    }
    pid_t tid = (pid_t)syscall(SYS_gettid);
    printf("thread %d %d %s\n", (int)tid, sched_getcpu(), comm);
    fflush(stdout);
    pthread_barrier_wait(&start);
    for (long j = 0; j < k + 2; j++) {
        long long n = base + 10 * k + j;
        int32_t signed_value = (int32_t)(n - 25);
        uint64_t unsigned_value = n % 2 ? (uint64_t)n : 0xffffffffffffff00ULL + (uint64_t)n;
        const char *name = NAMES[n % 4];
        DTRACE_PROBE3(ft, hit, signed_value, unsigned_value, name);
        long long ret = ft_value(n);
        printf("hit %d %d %s %" PRId32 " %" PRIu64 " %lld %s\n", (int)tid, sched_getcpu(), comm, signed_value,
               unsigned_value, ret, name);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = argc > 1 ? atol(argv[1]) : 2;
    base = argc > 2 ? atol(argv[2]) : 0;
    cpu_set_t allowed;
    pthread_t ids[64];
    char go;
    if (threads < 1 || threads > 64 || sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        return 2;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &allowed))
            cpus[ncpus++] = c;
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    for (long k = 0; k < threads; k++)
        pthread_create(&ids[k], NULL, worker, (void *)k);
    if (read(0, &go, 1) != 1)
        return 1;
    pthread_barrier_wait(&start);
    for (long k = 0; k < threads; k++)
        pthread_join(ids[k], NULL);
    return 0;
}
