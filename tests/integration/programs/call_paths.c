/* Calls along known paths, for stacks and flame graphs.  Waits for one byte on stdin (so a tracer can
 * attach), then runs ROUNDS rounds, prints "done" and waits for stdin to close (so its stacks can still
 * be named).  Each round, with leaf() firing paths:leaf(id) from its middle:
 *   main -> alpha -> leaf                 1 call  (id 1)
 *   main -> alpha -> hop -> leaf          2 calls (id 2)
 *   main -> beta -> hop -> leaf           3 calls (id 3)
 *   main -> beta -> delta -> hop -> leaf   4 calls (id 4)
 * so leaf() runs 10 times a round, hop() 9 times.  Built with frame pointers and without inlining. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/sdt.h>
#include <unistd.h>

volatile long sink;

__attribute__((noinline)) void leaf(long id)
{
    DTRACE_PROBE1(paths, leaf, id);
    sink += id;
}

__attribute__((noinline)) void hop(long id)
{
    leaf(id);
    sink++;
}

__attribute__((noinline)) void delta(long id)
{
    hop(id);
    sink++;
}

__attribute__((noinline)) void alpha(void)
{
    leaf(1);
    for (int i = 0; i < 2; i++)
        hop(2);
    sink++;
}

__attribute__((noinline)) void beta(void)
{
    for (int i = 0; i < 3; i++)
        hop(3);
    for (int i = 0; i < 4; i++)
        delta(4);
    sink++;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 1;
    char byte;
    if (read(0, &byte, 1) != 1)
        return 1;
    for (long r = 0; r < rounds; r++) {
        alpha();
        beta();
    }
    printf("done\n");
    fflush(stdout);
    while (read(0, &byte, 1) > 0)
        ;
    return 0;
}
