/*
 * test_abi.c - exercises usdtkit's libstapsdt through its C ABI, as a C user
 * (or a binding in another language) would: varargs, struct fields, errors,
 * bad calls, both storage modes, reloads and descriptor/mapping leaks.
 *
 * Run with `make -C native test`; it prints "N passed, M failed" and exits
 * non-zero on any failure.  Uses a private runtime folder under /tmp.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "libstapsdt.h"

static int passed, failed;

#define CHECK(cond)                                                                    \
  do {                                                                                 \
    if (cond) {                                                                        \
      passed++;                                                                        \
    } else {                                                                           \
      failed++;                                                                        \
      fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                \
    }                                                                                  \
  } while (0)

static int contains(const char *haystack, const char *needle) {
  return haystack && strstr(haystack, needle) != NULL;
}

static int count_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    return -1;
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

static int count_maps(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f)
    return -1;
  int n = 0, c;
  while ((c = fgetc(f)) != EOF)
    n += c == '\n';
  fclose(f);
  return n;
}

static void test_layout(void) {
  CHECK(offsetof(SDTProbe_t, name) == 0);
  CHECK(offsetof(SDTProbe_t, argFmt) == 8);
  CHECK(offsetof(SDTProbe_t, _fire) == 32);
  CHECK(offsetof(SDTProbe_t, provider) == 40);
  CHECK(offsetof(SDTProbe_t, argCount) == 48);
  CHECK(offsetof(SDTProvider_t, name) == 0);
  CHECK(offsetof(SDTProvider_t, probes) == 8);
  CHECK(offsetof(SDTProvider_t, lastError) == 16);
  CHECK(offsetof(SDTProvider_t, error) == 24);
  CHECK(offsetof(SDTProvider_t, _handle) == 32);
  CHECK(offsetof(SDTProvider_t, _filename) == 40);
  CHECK(offsetof(SDTProvider_t, _memfd) == 48);
  CHECK(offsetof(SDTProvider_t, _use_memfd) == 52);
  CHECK(offsetof(SDTProbeList_t, next) == sizeof(SDTProbe_t));
}

static void test_null_and_bad_calls(void) {
  CHECK(providerInit(NULL) == NULL);
  CHECK(providerInit("") == NULL);
  CHECK(providerInit("1abc") == NULL);
  CHECK(providerInit("my-app") == NULL);
  CHECK(providerInit("a b") == NULL);
  char long_name[SDT_MAX_NAME_LENGTH + 2];
  memset(long_name, 'a', sizeof(long_name) - 1);
  long_name[sizeof(long_name) - 1] = '\0';
  CHECK(providerInit(long_name) == NULL);
  long_name[SDT_MAX_NAME_LENGTH] = '\0';
  SDTProvider_t *p = providerInit(long_name);
  CHECK(p != NULL);
  providerDestroy(p);

  CHECK(providerUseMemfd(NULL, 1) == 0);
  CHECK(providerAddProbe(NULL, "x", 0) == NULL);
  CHECK(providerLoad(NULL) == -1);
  CHECK(providerUnload(NULL) == -1);
  providerDestroy(NULL);
  probeFire(NULL, 1, 2, 3);
  CHECK(probeIsEnabled(NULL) == 0);
  CHECK(probeSemaphore(NULL) == NULL);
  void *img = (void *)1;
  uint64_t size = 1;
  CHECK(providerElfImage(NULL, &img, &size) == -1 && img == NULL && size == 0);
  providerFreeImage(NULL);

  p = providerInit("bad_calls");
  CHECK(p && p->lastError == noError && p->error == NULL && p->_memfd == -1 &&
        p->_use_memfd == 0);
  CHECK(providerUseMemfd(p, 2) == 0 && p->_use_memfd == 0);
  CHECK(providerElfImage(p, NULL, &size) == -1 && p->lastError == invalidArgumentError);

  CHECK(providerAddProbe(p, NULL, 0) == NULL && p->lastError == invalidArgumentError);
  CHECK(providerAddProbe(p, "bad name", 0) == NULL && contains(p->error, "'bad name'") &&
        contains(p->error, "provider 'bad_calls'"));
  CHECK(providerAddProbe(p, "seven", 7, 8, 8, 8, 8, 8, 8, 8) == NULL &&
        contains(p->error, "7 arguments") && contains(p->error, "at most 6"));
  CHECK(providerAddProbe(p, "negative", -1) == NULL && p->lastError == invalidArgumentError);
  CHECK(providerAddProbe(p, "badtype", 1, 3) == NULL && contains(p->error, "invalid type 3"));
  CHECK(providerAddProbe(p, "noargtype", 2, int64, noarg) == NULL &&
        contains(p->error, "argument 2"));
  SDTProbe_t *ok = providerAddProbe(p, "ok", 1, int64);
  CHECK(ok != NULL && p->lastError == noError && p->error == NULL);
  CHECK(providerAddProbe(p, "ok", 0) == NULL && contains(p->error, "duplicate probe name 'ok'"));
  /* Not loaded: firing and enabled checks are harmless. */
  probeFire(ok, (int64_t)1);
  CHECK(probeIsEnabled(ok) == 0 && probeSemaphore(ok) == NULL && ok->_fire == NULL);
  CHECK(providerUnload(p) == 0);
  providerDestroy(p);
}

static void test_load_fire_and_semaphores(int memfd) {
  SDTProvider_t *p = providerInit(memfd ? "ctest_memfd" : "ctest_file");
  CHECK(providerUseMemfd(p, memfd) == 1 && p->_use_memfd == memfd);
  SDTProbe_t *all = providerAddProbe(p, "all_types", 6, uint8, int8, uint16, int16, uint32, int64);
  SDTProbe_t *none = providerAddProbe(p, "no_args", 0);
  CHECK(all && none && all->argCount == 6 && all->argFmt[5] == int64 && all->provider == p);
  CHECK(p->probes && &p->probes->probe == all && &p->probes->next->probe == none);

  CHECK(providerLoad(p) == 0);
  CHECK(p->lastError == noError && p->error == NULL && p->_handle != NULL && p->_filename);
  if (memfd) {
    CHECK(p->_memfd >= 0 && contains(p->_filename, "/proc/self/fd/"));
  } else {
    CHECK(p->_memfd == -1 && contains(p->_filename, "/ctest_file-") &&
          access(p->_filename, R_OK) == 0);
  }
  static const unsigned char site[] = {0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3};
  CHECK(all->_fire && memcmp(all->_fire, site, sizeof(site)) == 0);
  CHECK(none->_fire && memcmp(none->_fire, site, sizeof(site)) == 0);

  volatile uint16_t *sem = probeSemaphore(all);
  CHECK(sem != NULL && *sem == 0 && probeIsEnabled(all) == 0);
  *sem = 1; /* what the kernel does when a tracer attaches */
  CHECK(probeIsEnabled(all) == 1 && probeIsEnabled(none) == 0);
  *sem = 0;
  CHECK(probeIsEnabled(all) == 0);
  probeFire(all, (uint64_t)255, (uint64_t)-1, (uint64_t)65535, (uint64_t)-2, (uint64_t)4e9,
            (uint64_t)INT64_MIN);
  probeFire(none);

  CHECK(providerLoad(p) == -1 && contains(p->error, "already loaded"));

  /* Added after load: exists, does not fire until the next load. */
  SDTProbe_t *late = providerAddProbe(p, "late", 1, uint32);
  CHECK(late && late->_fire == NULL && probeSemaphore(late) == NULL);
  probeFire(late, (uint64_t)7);
  CHECK(providerUnload(p) == 0 && p->_handle == NULL && p->_filename == NULL && p->_memfd == -1);
  CHECK(all->_fire == NULL && probeSemaphore(all) == NULL && probeIsEnabled(all) == 0);
  CHECK(providerUnload(p) == 0);
  CHECK(providerLoad(p) == 0 && late->_fire != NULL && probeSemaphore(late) != NULL);
  probeFire(late, (uint64_t)7);
  providerDestroy(p);
}

static void test_determinism(void) {
  SDTProvider_t *a = providerInit("same");
  SDTProvider_t *b = providerInit("same");
  SDTProvider_t *c = providerInit("same");
  providerAddProbe(a, "p1", 2, int64, uint8);
  providerAddProbe(a, "p2", 0);
  providerAddProbe(b, "p1", 2, int64, uint8);
  providerAddProbe(b, "p2", 0);
  providerAddProbe(c, "p1", 2, int64, int8); /* one type differs */
  providerAddProbe(c, "p2", 0);
  void *ia, *ib, *ic;
  uint64_t sa, sb, sc;
  CHECK(providerElfImage(a, &ia, &sa) == 0 && providerElfImage(b, &ib, &sb) == 0 &&
        providerElfImage(c, &ic, &sc) == 0);
  CHECK(sa == sb && memcmp(ia, ib, sa) == 0);
  CHECK(sa != sc || memcmp(ia, ic, sa) != 0);
  providerFreeImage(ia);
  providerFreeImage(ib);
  providerFreeImage(ic);

  CHECK(providerLoad(a) == 0 && providerLoad(b) == 0 && providerLoad(c) == 0);
  CHECK(strcmp(a->_filename, b->_filename) == 0 && strcmp(a->_filename, c->_filename) != 0);
  providerDestroy(a);
  providerDestroy(b);
  providerDestroy(c);
}

static void test_storage_errors(const char *root) {
  char path[512];
  SDTProvider_t *p = providerInit("storage");
  providerAddProbe(p, "x", 0);

  setenv("USDTKIT_RUNTIME_DIR", "relative/dir", 1);
  CHECK(providerLoad(p) == -1 && p->lastError == tmpCreationError &&
        contains(p->error, "absolute"));

  snprintf(path, sizeof(path), "%s/link", root);
  unlink(path);
  CHECK(symlink("/tmp", path) == 0);
  setenv("USDTKIT_RUNTIME_DIR", path, 1);
  CHECK(providerLoad(p) == -1 && p->lastError == tmpCreationError &&
        contains(p->error, "symlink"));

  snprintf(path, sizeof(path), "%s/open", root);
  mkdir(path, 0700);
  chmod(path, 0777);
  setenv("USDTKIT_RUNTIME_DIR", path, 1);
  CHECK(providerLoad(p) == -1 && contains(p->error, "writable by others"));

  if (geteuid() == 0) {
    snprintf(path, sizeof(path), "%s/foreign", root);
    mkdir(path, 0700);
    CHECK(chown(path, 65534, 65534) == 0);
    setenv("USDTKIT_RUNTIME_DIR", path, 1);
    CHECK(providerLoad(p) == -1 && contains(p->error, "owned by uid 65534"));
  }

  /* A damaged file under the expected name is replaced, then loaded. */
  snprintf(path, sizeof(path), "%s/good", root);
  setenv("USDTKIT_RUNTIME_DIR", path, 1);
  CHECK(providerLoad(p) == 0);
  char file[1024];
  snprintf(file, sizeof(file), "%s", p->_filename);
  CHECK(providerUnload(p) == 0);
  CHECK(chmod(file, 0644) == 0);
  int fd = open(file, O_WRONLY | O_TRUNC);
  CHECK(fd >= 0 && write(fd, "garbage", 7) == 7);
  close(fd);
  CHECK(providerLoad(p) == 0 && strcmp(p->_filename, file) == 0);
  struct stat st;
  CHECK(stat(file, &st) == 0 && st.st_size > 7 && (st.st_mode & 0777) == 0444);
  providerDestroy(p);
}

static void test_no_leaks(void) {
  for (int memfd = 0; memfd <= 1; memfd++) {
    /* Warm up: the first load maps the runtime directory's files etc. */
    SDTProvider_t *p = providerInit("cycles");
    providerUseMemfd(p, memfd);
    providerAddProbe(p, "a", 1, int64);
    providerLoad(p);
    providerDestroy(p);
    int fds = count_fds(), maps = count_maps();
    int failures = 0;
    for (int i = 0; i < 1000; i++) {
      p = providerInit("cycles");
      providerUseMemfd(p, memfd);
      SDTProbe_t *a = providerAddProbe(p, "a", 1, int64);
      failures += providerLoad(p) != 0;
      probeFire(a, (int64_t)i);
      failures += providerUnload(p) != 0;
      providerDestroy(p);
    }
    CHECK(failures == 0);
    CHECK(count_fds() == fds);
    CHECK(count_maps() == maps);
  }
}

/* File mode: providerDestroy removes the file unless another process maps it. */
static void test_destroy_reclaims_the_file(void) {
  char path[1024];
  SDTProvider_t *p = providerInit("reclaimed");
  providerAddProbe(p, "a", 0);
  CHECK(providerLoad(p) == 0);
  snprintf(path, sizeof(path), "%s", p->_filename);
  CHECK(providerUnload(p) == 0 && access(path, F_OK) == 0); /* unload keeps it */
  providerDestroy(p);
  CHECK(access(path, F_OK) != 0 && errno == ENOENT);

  int ready[2], release[2];
  CHECK(pipe(ready) == 0 && pipe(release) == 0);
  pid_t child = fork();
  if (child == 0) { /* maps the same file (same definition) until released */
    SDTProvider_t *c = providerInit("shared_file");
    providerAddProbe(c, "a", 0);
    char state = providerLoad(c) == 0 ? 'y' : 'n';
    if (write(ready[1], &state, 1) != 1 || read(release[0], &state, 1) != 1)
      _exit(2);
    providerDestroy(c);
    _exit(0);
  }
  char state = 0;
  CHECK(read(ready[0], &state, 1) == 1 && state == 'y');
  p = providerInit("shared_file");
  providerAddProbe(p, "a", 0);
  CHECK(providerLoad(p) == 0);
  snprintf(path, sizeof(path), "%s", p->_filename);
  providerDestroy(p);
  CHECK(access(path, F_OK) == 0); /* the child still maps it */
  int status = -1;
  CHECK(write(release[1], "x", 1) == 1 && waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(access(path, F_OK) != 0); /* the last one out removed it */
  close(ready[0]);
  close(ready[1]);
  close(release[0]);
  close(release[1]);
}

int main(void) {
  char root[] = "/tmp/usdtkit-ctest-XXXXXX";
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    return 2;
  }
  char runtime[600];
  snprintf(runtime, sizeof(runtime), "%s/run", root);
  setenv("USDTKIT_RUNTIME_DIR", runtime, 1);

  test_layout();
  test_null_and_bad_calls();
  test_load_fire_and_semaphores(0);
  test_load_fire_and_semaphores(1);
  test_determinism();
  test_no_leaks();
  test_destroy_reclaims_the_file();
  test_storage_errors(root);

  char cmd[700];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
  if (system(cmd) != 0)
    fprintf(stderr, "warning: could not remove %s\n", root);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
