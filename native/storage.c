/*
 * storage.c - where a generated image lives while it is loaded.
 *
 * memfd mode: the image is copied into an anonymous memory file
 * (memfd_create), sealed against changes and dlopen()ed through
 * /proc/self/fd/N.  Nothing appears on disk and each process has its own
 * copy, so a tracer must attach by PID.
 *
 * file mode (the default): the image is stored as
 *     <runtime dir>/<provider>-<first 16 hex digits of its SHA-256>.so
 * Equal definitions give equal bytes, so every process of a service that
 * declares the same probes maps the same file (the same inode), and one
 * tracer attached by path covers all of them, including workers started
 * after the tracer.  The runtime directory is the first usable of
 *     $USDTKIT_RUNTIME_DIR                 (if set, the only candidate)
 *     $XDG_RUNTIME_DIR/usdtkit
 *     /run/user/<euid>/usdtkit
 *     /run/usdtkit                         (euid 0 only)
 *     /tmp/usdtkit-<euid>
 * where "usable" means: a real directory (not a symlink) owned by the
 * effective user, writable by nobody else, on a filesystem not mounted
 * noexec.  Missing directories are created with mode 0700.  Files are written
 * to a temporary name in that directory and published with an atomic
 * rename that never replaces a file another process published first (so all
 * processes keep sharing one inode); an existing file is loaded only after
 * its bytes compare equal to the expected image, otherwise it is replaced.
 * The file stays after unload: other processes, later workers and tracers
 * attached by path use it.  Files no process maps any more are removed by
 * reclaim.c, at providerDestroy and by later loads; from choosing its file
 * until mapping it, a loader holds a shared lock on the directory, which
 * reclaiming takes exclusively.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "sdt_internal.h"

/* How long a load waits for a collection in progress (reclaim.c), which holds
 * the directory lock exclusively for a bounded scan. */
#define LOAD_LOCK_WAIT_MS 10000

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U /* Linux 6.3+: ask for an executable memfd explicitly */
#endif

static void format_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void format_error(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static int write_all(int fd, const uint8_t *data, size_t size) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    data += n;
    size -= (size_t)n;
  }
  return 0;
}

static int create_memfd(const char *name) {
  unsigned int flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  int fd = memfd_create(name, flags | MFD_EXEC);
  if (fd < 0 && errno == EINVAL) /* kernels before 6.3 do not know MFD_EXEC */
    fd = memfd_create(name, flags);
  return fd;
}

int sdt_memfd_supported(void) {
  int fd = create_memfd("usdtkit-check");
  if (fd < 0)
    return errno != ENOSYS;
  close(fd);
  return 1;
}

int sdt_store_memfd(const char *provider, const struct sdt_image *image,
                    struct sdt_stored *out, char *err, size_t errlen) {
  char name[SDT_MAX_NAME_LENGTH + 16];
  snprintf(name, sizeof(name), "usdtkit-%s", provider);
  int fd = create_memfd(name);
  if (fd < 0) {
    format_error(err, errlen, "memfd_create failed: %s", strerror(errno));
    return -1;
  }
  if (write_all(fd, image->data, image->size) != 0) {
    format_error(err, errlen, "cannot write memfd: %s", strerror(errno));
    close(fd);
    return -1;
  }
  /* Hardening only: if sealing is unavailable the image still loads. */
  (void)fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);

  char path[64];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  out->path = strdup(path);
  if (!out->path) {
    format_error(err, errlen, "out of memory");
    close(fd);
    return -1;
  }
  out->memfd = fd;
  out->dirfd = -1;
  return 0;
}

/* Append "; <path>: <reason>" to the list of rejected candidates. */
static void note_rejection(char *why, size_t whylen, const char *path, const char *reason) {
  size_t used = strlen(why);
  if (used + 1 < whylen)
    snprintf(why + used, whylen - used, "%s%s: %s", used ? "; " : "", path, reason);
}

/* 1 if `path` is a directory owned by `uid` that nobody else can write. */
static int trusted_parent(const char *path, uid_t uid) {
  struct stat st;
  return lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == uid &&
         !(st.st_mode & (S_IWGRP | S_IWOTH));
}

/* Open (creating it 0700 if missing) and vet a candidate runtime directory.
 * Returns a directory fd, or -1 after noting why the candidate was rejected. */
static int open_candidate(const char *path, uid_t uid, char *why, size_t whylen) {
  char reason[128];
  if (mkdir(path, 0700) != 0 && errno != EEXIST) {
    note_rejection(why, whylen, path, strerror(errno));
    return -1;
  }
  int dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) {
    note_rejection(why, whylen, path,
                   errno == ELOOP || errno == ENOTDIR ? "not a directory (symlink?)"
                                                      : strerror(errno));
    return -1;
  }
  struct stat st;
  struct statvfs vfs;
  if (fstat(dfd, &st) != 0) {
    note_rejection(why, whylen, path, strerror(errno));
  } else if (st.st_uid != uid) {
    snprintf(reason, sizeof(reason), "owned by uid %u, not %u", (unsigned)st.st_uid,
             (unsigned)uid);
    note_rejection(why, whylen, path, reason);
  } else if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    snprintf(reason, sizeof(reason), "writable by others (mode %04o)",
             (unsigned)(st.st_mode & 07777));
    note_rejection(why, whylen, path, reason);
  } else if (fstatvfs(dfd, &vfs) == 0 && (vfs.f_flag & ST_NOEXEC)) {
    note_rejection(why, whylen, path, "mounted noexec");
  } else {
    return dfd;
  }
  close(dfd);
  return -1;
}

/* Find the runtime directory; its path goes to `dir`.  Returns an fd or -1. */
static int open_runtime_dir(char *dir, size_t dirlen, char *err, size_t errlen) {
  uid_t uid = geteuid();
  char why[1024] = "";
  char parent[64];
  int dfd;

  const char *env = getenv("USDTKIT_RUNTIME_DIR");
  if (env && env[0]) {
    if (env[0] != '/' || strlen(env) >= dirlen) {
      format_error(err, errlen, "USDTKIT_RUNTIME_DIR must be an absolute path");
      return -1;
    }
    snprintf(dir, dirlen, "%s", env);
    dfd = open_candidate(dir, uid, why, sizeof(why));
    if (dfd < 0)
      format_error(err, errlen, "unusable USDTKIT_RUNTIME_DIR: %s", why);
    return dfd;
  }

  const char *xdg = getenv("XDG_RUNTIME_DIR");
  if (xdg && xdg[0] == '/' && strlen(xdg) + sizeof("/usdtkit") <= dirlen) {
    if (trusted_parent(xdg, uid)) {
      snprintf(dir, dirlen, "%s/usdtkit", xdg);
      if ((dfd = open_candidate(dir, uid, why, sizeof(why))) >= 0)
        return dfd;
    } else {
      note_rejection(why, sizeof(why), xdg, "not a private directory of this user");
    }
  }

  snprintf(parent, sizeof(parent), "/run/user/%u", (unsigned)uid);
  if (trusted_parent(parent, uid)) {
    snprintf(dir, dirlen, "%s/usdtkit", parent);
    if ((dfd = open_candidate(dir, uid, why, sizeof(why))) >= 0)
      return dfd;
  }

  if (uid == 0 && trusted_parent("/run", 0)) {
    snprintf(dir, dirlen, "/run/usdtkit");
    if ((dfd = open_candidate(dir, uid, why, sizeof(why))) >= 0)
      return dfd;
  }

  snprintf(dir, dirlen, "/tmp/usdtkit-%u", (unsigned)uid);
  if ((dfd = open_candidate(dir, uid, why, sizeof(why))) >= 0)
    return dfd;

  format_error(err, errlen,
               "no usable runtime directory (%s); set USDTKIT_RUNTIME_DIR or use memfd mode",
               why);
  return -1;
}

/* 1 if the open file holds exactly the image and belongs to us. */
static int file_matches(int fd, const struct sdt_image *image) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
      (uint64_t)st.st_size != (uint64_t)image->size)
    return 0;
  uint8_t buf[4096];
  size_t off = 0;
  while (off < image->size) {
    size_t want = image->size - off < sizeof(buf) ? image->size - off : sizeof(buf);
    ssize_t n = pread(fd, buf, want, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0 || memcmp(buf, image->data + off, (size_t)n) != 0)
      return 0;
    off += (size_t)n;
  }
  return 1;
}

/* 1 if `name` in `dfd` exists with the expected content. */
static int existing_matches(int dfd, const char *name, const struct sdt_image *image) {
  int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return 0;
  int same = file_matches(fd, image);
  close(fd);
  return same;
}

/* Publish tmp as name without replacing an existing file: 0 published,
 * 1 someone else's file is already there, -1 error. */
static int publish_noreplace(int dfd, const char *tmp, const char *name) {
#ifdef RENAME_NOREPLACE /* glibc 2.28+ */
  if (renameat2(dfd, tmp, dfd, name, RENAME_NOREPLACE) == 0)
    return 0;
  if (errno == EEXIST)
    return 1;
  if (errno != EINVAL && errno != ENOSYS)
    return -1;
#endif
  /* Filesystem without RENAME_NOREPLACE: a hard link is just as exclusive. */
  if (linkat(dfd, tmp, dfd, name, 0) == 0) {
    unlinkat(dfd, tmp, 0);
    return 0;
  }
  return errno == EEXIST ? 1 : -1;
}

static unsigned int temp_counter;

static int place_file(int dfd, const char *dir, const char *name,
                      const struct sdt_image *image, char *err, size_t errlen) {
  if (existing_matches(dfd, name, image))
    return 0;

  char tmp[NAME_MAX + 1];
  int tfd = -1;
  for (int attempt = 0; attempt < 100 && tfd < 0; attempt++) {
    unsigned int n = __atomic_fetch_add(&temp_counter, 1, __ATOMIC_RELAXED);
    snprintf(tmp, sizeof(tmp), ".%.*s.%ld.%u.tmp", 200, name, (long)getpid(), n);
    tfd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
    if (tfd < 0 && errno != EEXIST) {
      format_error(err, errlen, "cannot create a file in %s: %s", dir, strerror(errno));
      return -1;
    }
  }
  if (tfd < 0) {
    format_error(err, errlen, "cannot create a temporary file in %s", dir);
    return -1;
  }
  if (write_all(tfd, image->data, image->size) != 0 || fchmod(tfd, 0444) != 0) {
    format_error(err, errlen, "cannot write %s/%s: %s", dir, tmp, strerror(errno));
    close(tfd);
    unlinkat(dfd, tmp, 0);
    return -1;
  }
  if (close(tfd) != 0) {
    format_error(err, errlen, "cannot write %s/%s: %s", dir, tmp, strerror(errno));
    unlinkat(dfd, tmp, 0);
    return -1;
  }

  int published = publish_noreplace(dfd, tmp, name);
  if (published == 1) {
    /* Another process published first: share its file if it is right. */
    if (existing_matches(dfd, name, image)) {
      unlinkat(dfd, tmp, 0);
      return 0;
    }
    /* Wrong content (damaged, or not ours): replace it atomically. */
    published = renameat(dfd, tmp, dfd, name) == 0 ? 0 : -1;
  }
  if (published != 0) {
    format_error(err, errlen, "cannot publish %s/%s: %s", dir, name, strerror(errno));
    unlinkat(dfd, tmp, 0);
    return -1;
  }
  return 0;
}

int sdt_store_file(const char *provider, const struct sdt_image *image,
                   struct sdt_stored *out, char *err, size_t errlen) {
  uint8_t digest[32];
  sdt_sha256(image->data, image->size, digest);
  char name[SDT_MAX_NAME_LENGTH + 32];
  int len = snprintf(name, sizeof(name), "%s-", provider);
  for (int i = 0; i < 8; i++)
    len += snprintf(name + len, sizeof(name) - (size_t)len, "%02x", digest[i]);
  snprintf(name + len, sizeof(name) - (size_t)len, ".so");

  char dir[PATH_MAX];
  int dfd = open_runtime_dir(dir, sizeof(dir), err, errlen);
  if (dfd < 0)
    return -1;
  /* Where the filesystem has no flock(), collections cannot lock either, so
   * they never run there and loading needs no lock. */
  if (sdt_lock_dir(dfd, LOCK_SH, LOAD_LOCK_WAIT_MS) != 0 && errno == EWOULDBLOCK) {
    format_error(err, errlen, "cannot lock %s: held by another process for too long", dir);
    close(dfd);
    return -1;
  }
  size_t path_len = strlen(dir) + 1 + strlen(name) + 1;
  out->path = malloc(path_len);
  if (!out->path) {
    format_error(err, errlen, "out of memory");
    close(dfd);
    return -1;
  }
  snprintf(out->path, path_len, "%s/%s", dir, name);
  if (place_file(dfd, dir, name, image, err, errlen) != 0) {
    free(out->path);
    out->path = NULL;
    close(dfd); /* also releases the lock */
    return -1;
  }
  out->memfd = -1;
  out->dirfd = dfd;
  return 0;
}

int sdt_store_done(struct sdt_stored *stored, int mapped) {
  int dfd = stored->dirfd;
  if (dfd < 0)
    return 0;
  stored->dirfd = -1;
  flock(dfd, LOCK_UN);
  int seen = 0;
  const char *slash = strrchr(stored->path, '/');
  if (mapped && slash && slash != stored->path) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - stored->path), stored->path);
    seen = sdt_reclaim_after_load(dfd, dir, slash + 1);
  }
  close(dfd);
  return seen;
}
