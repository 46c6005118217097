/* A function whose first instruction the kernel will not probe (an AVX instruction, VEX-encoded), next
 * to one it will.  Waits for one byte on stdin, so a tracer can try both while the code is mapped. */
#include <unistd.h>

__attribute__((naked, noinline)) void vex_first(void) { __asm__("vmovd %esi, %xmm0\n\tret"); }
__attribute__((noinline)) int vex_plain(int x) { __asm__ volatile(""); return x + 1; }

int main(int argc, char **argv)
{
    char go;
    (void)argv;
    if (read(0, &go, 1) != 1)
        return 1;
    return vex_plain(argc) == 0;
}
