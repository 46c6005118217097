/* Calls glibc's strlen, an indirect function, for IFUNC tests.
 *   ifunc_calls N        calls strlen N times, prints the total, exits
 *   ifunc_calls wait     calls strlen once, prints "ready", then calls it every 10 ms until killed
 * The call goes through a volatile pointer so that the compiler can neither fold nor inline it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    size_t (*volatile call)(const char *) = strlen;
    size_t total = 0;
    if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        struct timespec pause = {0, 10 * 1000 * 1000};
        total += call(argv[0]);
        printf("ready\n");
        fflush(stdout);
        for (;;) {
            total += call(argv[0]);
            nanosleep(&pause, NULL);
        }
    }
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 1000;
    for (long i = 0; i < n; i++)
        total += call(argv[0]);
    printf("%zu\n", total);
    return 0;
}
