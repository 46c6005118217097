/* demo_httpd: a tiny HTTP/1.0 server on loopback, instrumented with USDT probes.
 *
 *   demo_httpd [--port N] [--fail-every N] [--requests N] [--help]
 *
 * Routes: GET /            a short greeting
 *         GET /items/N     N items, rendered by render_items() (a function worth a uprobe/uretprobe)
 *         GET /slow        sleeps 20 ms in slow_operation()
 *         anything else    404
 * --fail-every N makes every Nth request answer 500 (a broken contract, for tests that must catch it).
 * --requests N exits after N requests.  It prints "listening on PORT" once ready.
 *
 * Probes (provider demo_httpd, all with semaphores):
 *   request__start(u64 id, s32 fd, char *method, char *path)
 *   request__done(u64 id, s16 status, char *route, u32 bytes, u64 duration_ns)  -- one call site per route
 *   conn__accept(s32 fd, u16 peer_port)
 */
#define _GNU_SOURCE
#define _SDT_HAS_SEMAPHORES 1
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/sdt.h>
#include <time.h>
#include <unistd.h>

#define SEMAPHORE(name) __extension__ unsigned short demo_httpd_##name##_semaphore \
    __attribute__((unused, section(".probes")))
SEMAPHORE(request__start);
SEMAPHORE(request__done);
SEMAPHORE(conn__accept);

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

/* Renders n items into buf; returns the length. Probed with uprobe/uretprobe by the demo. */
__attribute__((noinline)) size_t render_items(char *buf, size_t cap, long n)
{
    size_t len = 0;
    for (long i = 0; i < n && len + 32 < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "item %ld\n", i);
    return len;
}

/* A slow dependency: 20 ms. */
__attribute__((noinline)) int slow_operation(void)
{
    struct timespec t = {0, 20 * 1000 * 1000};
    nanosleep(&t, NULL);
    return 42;
}

static void reply(int fd, int status, const char *body, size_t len)
{
    char head[128];
    const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Internal Server Error";
    int n = snprintf(head, sizeof(head), "HTTP/1.0 %d %s\r\nContent-Length: %zu\r\n\r\n", status, reason, len);
    if (write(fd, head, (size_t)n) < 0 || write(fd, body, len) < 0)
        return;
}

static void handle(int fd, uint64_t id, long fail_every)
{
    char req[1024], method[8] = "", path[256] = "", body[4096];
    ssize_t got = read(fd, req, sizeof(req) - 1);
    if (got <= 0)
        return;
    req[got] = 0;
    if (sscanf(req, "%7s %255s", method, path) != 2)
        return;
    uint64_t started = now_ns();
    DTRACE_PROBE4(demo_httpd, request__start, id, fd, method, path);

    int16_t status = 200;
    size_t len;
    int failing = fail_every > 0 && id % (uint64_t)fail_every == 0;
    if (!strcmp(path, "/")) {
        len = (size_t)snprintf(body, sizeof(body), "hello from demo_httpd\n");
        if (failing)
            status = 500;
        reply(fd, status, body, len);
        DTRACE_PROBE5(demo_httpd, request__done, id, status, "/", (uint32_t)len, now_ns() - started);
    } else if (!strncmp(path, "/items/", 7)) {
        len = render_items(body, sizeof(body), strtol(path + 7, NULL, 10));
        if (failing)
            status = 500;
        reply(fd, status, body, len);
        DTRACE_PROBE5(demo_httpd, request__done, id, status, "/items", (uint32_t)len, now_ns() - started);
    } else if (!strcmp(path, "/slow")) {
        len = (size_t)snprintf(body, sizeof(body), "slow answer %d\n", slow_operation());
        if (failing)
            status = 500;
        reply(fd, status, body, len);
        DTRACE_PROBE5(demo_httpd, request__done, id, status, "/slow", (uint32_t)len, now_ns() - started);
    } else {
        status = 404;
        len = (size_t)snprintf(body, sizeof(body), "not found\n");
        reply(fd, status, body, len);
        DTRACE_PROBE5(demo_httpd, request__done, id, status, "other", (uint32_t)len, now_ns() - started);
    }
}

int main(int argc, char **argv)
{
    int port = 0;
    long fail_every = 0, max_requests = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: demo_httpd [--port N] [--fail-every N] [--requests N]\n"
                   "A tiny HTTP/1.0 server on 127.0.0.1 with USDT probes (provider demo_httpd).\n"
                   "Routes: /, /items/N, /slow. Port 0 (default) picks a free port.\n");
            return 0;
        } else if (!strcmp(argv[i], "--port") && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--fail-every") && i + 1 < argc) {
            fail_every = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--requests") && i + 1 < argc) {
            max_requests = atol(argv[++i]);
        } else {
            fprintf(stderr, "demo_httpd: unknown argument %s (see --help)\n", argv[i]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    int server = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(server, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(server, 64) < 0) {
        fprintf(stderr, "demo_httpd: cannot listen on port %d: %s\n", port, strerror(errno));
        return 1;
    }
    socklen_t alen = sizeof(addr);
    getsockname(server, (struct sockaddr *)&addr, &alen);
    printf("listening on %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    for (uint64_t id = 1; max_requests < 0 || (long)id <= max_requests; id++) {
        struct sockaddr_in peer;
        socklen_t plen = sizeof(peer);
        int fd = accept(server, (struct sockaddr *)&peer, &plen);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (demo_httpd_conn__accept_semaphore)
            DTRACE_PROBE2(demo_httpd, conn__accept, fd, ntohs(peer.sin_port));
        handle(fd, id, fail_every);
        close(fd);
    }
    close(server);
    return 0;
}
