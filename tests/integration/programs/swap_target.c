/* A program with one USDT probe behind a semaphore (evil1:tick), for tests that replace a binary's path
 * between reading its notes and attaching.
 *   swap_target N         fires evil1:tick N times
 *   swap_target wait N    waits for a byte on stdin, then fires N times */
#define _SDT_HAS_SEMAPHORES 1
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/sdt.h>

__attribute__((section(".probes"))) volatile unsigned short evil1_tick_semaphore;

int main(int argc, char **argv)
{
    int wait = argc > 2 && strcmp(argv[1], "wait") == 0;
    int n = atoi(argv[argc - 1]);
    if (wait) {
        char byte;
        if (read(0, &byte, 1) < 0)
            return 2;
    }
    for (int i = 0; i < n; i++)
        STAP_PROBE1(evil1, tick, i);
    return 0;
}
