/*
 * rendezvous.c - tell the tracer that started this process about a provider
 * it has just loaded, and wait until the tracer has attached to it.
 *
 * A runtime provider does not exist when its program starts, so a tracer that
 * starts the program (`usdtkit trace -c CMD`, a test's traced process) cannot
 * attach to it beforehand, and attaching once the program runs races its
 * first hits.  So such a tracer hands the program a rendezvous: one end of an
 * AF_UNIX SOCK_SEQPACKET socket pair, inherited, and named in the
 * environment as
 *     USDTKIT_RENDEZVOUS=FD:INODE
 * (the descriptor number and the socket's inode).  providerLoad() in any
 * process holding it (the program, and workers it forks) announces the
 * object it loaded once it is mapped, before any probe can fire:
 *     usdtkit-rendezvous 1 \n PROVIDER \n DEVICE \n INODE \n DEADLINE \n PATH \n
 * (the object's st_dev and st_ino, by which the tracer finds it among the
 * process's mappings; when the loader stops waiting, in CLOCK_MONOTONIC
 * milliseconds, so the tracer can tell a late answer; the path it was loaded
 * from), together with one end of a new socket pair of its own (SCM_RIGHTS).  The tracer learns the
 * sender's PID from the kernel (SO_PASSCRED), attaches, and writes a byte to
 * that socket; the loader waits for the byte, for end-of-file (the tracer
 * closed the socket, or died: the kernel closes the descriptors of a dead
 * process, in flight ones included), or for the time limit: 5 seconds, or
 * USDTKIT_RENDEZVOUS_TIMEOUT seconds (0 to 3600; 0 only announces).
 *
 * A rendezvous is used only if the named descriptor is a SOCK_SEQPACKET
 * socket with the named inode: a variable copied into a process that did not
 * inherit the descriptor (a program started with its descriptors closed), or
 * whose number now names something else, is ignored.  Nothing here can make
 * providerLoad() fail; every error just skips the announcement.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sdt_internal.h"

#define RENDEZVOUS_ENV "USDTKIT_RENDEZVOUS"
#define TIMEOUT_ENV "USDTKIT_RENDEZVOUS_TIMEOUT"
#define DEFAULT_WAIT_MS 5000
#define MAX_WAIT_SECONDS 3600

/* Parse a decimal number (digits only, no sign or blanks) ending at `end`. */
static int parse_decimal(const char *text, char end, unsigned long long max,
                         unsigned long long *value, const char **rest) {
  unsigned long long out = 0;
  const char *p = text;
  if (*p < '0' || *p > '9')
    return -1;
  for (; *p >= '0' && *p <= '9'; p++) {
    unsigned digit = (unsigned)(*p - '0');
    if (out > (max - digit) / 10)
      return -1;
    out = out * 10 + digit;
  }
  if (*p != end)
    return -1;
  *value = out;
  *rest = p;
  return 0;
}

/* The rendezvous descriptor named by the environment, or -1 if there is none
 * (no variable, a malformed one, or a descriptor that is not that socket). */
static int rendezvous_fd(void) {
  const char *value = getenv(RENDEZVOUS_ENV);
  if (!value)
    return -1;
  unsigned long long fd, inode;
  const char *rest;
  if (parse_decimal(value, ':', INT_MAX, &fd, &rest) != 0 ||
      parse_decimal(rest + 1, '\0', ULLONG_MAX, &inode, &rest) != 0)
    return -1;
  struct stat st;
  if (fstat((int)fd, &st) != 0 || !S_ISSOCK(st.st_mode) || (unsigned long long)st.st_ino != inode)
    return -1;
  int type = 0;
  socklen_t len = sizeof(type);
  if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_SEQPACKET)
    return -1;
  return (int)fd;
}

/* How long to wait for the tracer, in milliseconds. */
static int wait_ms(void) {
  const char *value = getenv(TIMEOUT_ENV);
  if (!value || !*value)
    return DEFAULT_WAIT_MS;
  char *end;
  errno = 0;
  double seconds = strtod(value, &end);
  if (errno || *end || !(seconds >= 0 && seconds <= MAX_WAIT_SECONDS))
    return DEFAULT_WAIT_MS;
  return (int)(seconds * 1000);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for `events` on `fd` until `deadline` (monotonic ms); 1 when ready
 * (or hung up), 0 when the time is up, -1 on error. */
static int wait_until(int fd, short events, long long deadline) {
  for (;;) {
    long long left = deadline - now_ms();
    struct pollfd pfd = {.fd = fd, .events = events};
    int rc = poll(&pfd, 1, left > 0 ? (int)left : 0);
    if (rc > 0)
      return 1;
    if (rc == 0)
      return 0;
    if (errno != EINTR)
      return -1;
  }
}

/* Send the announcement with `reply` attached; 0 once sent. */
static int announce(int fd, const char *text, size_t size, int reply, long long deadline) {
  union {
    char buffer[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct iovec iov = {.iov_base = (void *)text, .iov_len = size};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                       .msg_controllen = sizeof(control.buffer)};
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &reply, sizeof(int));
  for (;;) {
    if (sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)size)
      return 0;
    if (errno == EINTR)
      continue;
    /* A full queue (many processes announcing at once) drains as the
     * tracer answers; anything else (the tracer is gone) ends the rendezvous. */
    if ((errno != EAGAIN && errno != EWOULDBLOCK) || wait_until(fd, POLLOUT, deadline) != 1)
      return -1;
  }
}

SDT_HIDDEN void sdt_rendezvous(const char *provider, const char *path, int memfd) {
  int saved_errno = errno;
  int fd = rendezvous_fd();
  struct stat object;
  int pair[2];
  if (fd < 0 || (memfd >= 0 ? fstat(memfd, &object) : stat(path, &object)) != 0 ||
      socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
    errno = saved_errno;
    return;
  }
  long long deadline = now_ms() + wait_ms();
  char text[PATH_MAX + 224];
  int size = snprintf(text, sizeof(text), "usdtkit-rendezvous 1\n%s\n%llu\n%llu\n%lld\n%s\n",
                      provider, (unsigned long long)object.st_dev,
                      (unsigned long long)object.st_ino, deadline, path);
  int sent = size > 0 && (size_t)size < sizeof(text) &&
             announce(fd, text, (size_t)size, pair[1], deadline) == 0;
  close(pair[1]); /* the tracer holds the only other copy: its close or death is our end-of-file */
  if (sent && wait_until(pair[0], POLLIN, deadline) == 1) {
    char answer;
    while (recv(pair[0], &answer, 1, MSG_DONTWAIT) < 0 && errno == EINTR)
      ;
  }
  close(pair[0]);
  errno = saved_errno;
}
