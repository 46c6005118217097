/* Known numbers of calls into libc's allocator, for function patterns (uprobe:libc:mall*).
 *   alloc_calls N M   calls malloc N times and malloc_usable_size M times, and nothing else that
 *                     allocates (no stdio), then exits */
#include <malloc.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
    long m = argc > 2 ? strtol(argv[2], NULL, 10) : 0;
    void *volatile p = NULL;
    size_t total = 0;
    for (long i = 0; i < n; i++) {
        p = malloc(32 + i);
        if (i < n - 1)
            free(p);
    }
    for (long i = 0; i < m; i++)
        total += malloc_usable_size(p);
    return total == (size_t)-1;
}
