/* C++ functions traced by their demangled names: overloads, a constructor (whose complete and base
 * object symbols share one address), a const member function.
 *   cpp_names N   N rounds; each constructs one shapes::Circle, calls area() once, scale(long) twice
 *                 and scale(long, long) three times
 * Built without the C++ runtime (-fno-exceptions -fno-rtti), so plain gcc links it. */
#include <stdio.h>
#include <stdlib.h>

namespace shapes {

struct Circle {
    long r;
    __attribute__((noinline)) explicit Circle(long radius) : r(radius) { __asm__ volatile(""); }
    __attribute__((noinline)) long area() const { __asm__ volatile(""); return 3 * r * r; }
};

__attribute__((noinline)) long scale(long x) { __asm__ volatile(""); return 2 * x; }
__attribute__((noinline)) long scale(long x, long y) { __asm__ volatile(""); return x * y; }

}  // namespace shapes

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
    long total = 0;
    for (long i = 1; i <= n; i++) {
        shapes::Circle circle(i);
        total += circle.area();
        for (int k = 0; k < 2; k++)
            total += shapes::scale(i);
        for (int k = 0; k < 3; k++)
            total += shapes::scale(i, k);
    }
    printf("%ld\n", total);
    return 0;
}
