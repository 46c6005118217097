/*
 * reclaim.c - removes objects from the runtime directory once no process
 * maps them.
 *
 * File mode names objects by content and keeps them after unload, so every
 * distinct definition ever loaded, and every process killed before it
 * destroyed its provider, leaves a file behind.  A file is garbage when no
 * process maps it, which /proc/<pid>/maps tells: each mapped file is listed
 * with its inode number and path.  Two moments reclaim:
 *
 *   - after a load (sdt_reclaim_after_load), when the directory holds at
 *     least RECLAIM_MIN_FILES of our files and at least twice as many as the
 *     last collection kept (or that collection is RECLAIM_PERIOD seconds
 *     old): every unmapped object, and every temporary file older than
 *     ORPHAN_AGE seconds (only a writer killed mid-write leaves one), is
 *     removed.  The doubling rule keeps collections, which read the maps of
 *     every process, to one per RECLAIM_MIN_FILES new files at most; the
 *     count kept is stored in STATE_NAME.  At most RECLAIM_MAX_FILES files are
 *     examined per collection, which bounds its memory and time.
 *   - at providerDestroy (sdt_reclaim_file): the provider's own file, unless
 *     another process (or another provider of this one) still maps it.
 *
 * Races with loaders: a loader holds a shared flock() on the directory from
 * choosing its file (checking an existing one, or publishing a new one)
 * until it has mapped it; reclaiming holds the lock exclusively.  So a file
 * is never removed between being chosen and being mapped, and once mapped,
 * the scan sees it.  A load-time collection only tries the lock: if others
 * are loading, a later load collects.
 *
 * Only regular files owned by us, with the names this library gives, in a
 * directory owned by us and private to us (no group or other permission) are
 * touched; entries are examined with fstatat(AT_SYMLINK_NOFOLLOW) and removed
 * with unlinkat() relative to the directory's descriptor, after checking the
 * name still holds the inode examined, so no symlink is ever followed.
 *
 * Matching: a mapped file matches a candidate by inode number or by path.
 * The device is not compared: on overlayfs and btrfs, maps shows the device
 * of the underlying filesystem, not the one stat() reports.  An inode number
 * that happens to equal one on another filesystem only keeps a garbage file
 * longer.  And before trusting a scan, the loader checks that its own maps
 * show the file it just mapped; where they do not, nothing is ever removed.
 *
 * Processes whose maps we may not read are skipped: those of other users
 * cannot open files in a private directory.  Unlinking a file that is still
 * mapped never disturbs the mapping process; only tracers attaching to the
 * path afterwards would not see it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sdt_internal.h"

#define RECLAIM_MIN_FILES 16
#define RECLAIM_MAX_FILES 4096
#define RECLAIM_PERIOD 300
#define ORPHAN_AGE 5
#define STATE_NAME ".reclaim"

/* Longest name we give: "." + provider + "-" + 16 hex + ".so." + pid + "." + counter + ".tmp". */
#define NAME_CAP (SDT_MAX_NAME_LENGTH + 64)

struct candidate {
  ino_t ino;
  time_t mtime;
  int temporary;
  int mapped;
  char name[NAME_CAP];
};

static long elapsed_ms(const struct timespec *since) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

int sdt_lock_dir(int dfd, int operation, int wait_ms) {
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  long pause_us = 250;
  for (;;) {
    if (flock(dfd, operation | LOCK_NB) == 0)
      return 0;
    if (errno != EWOULDBLOCK && errno != EINTR)
      return -1;
    if (elapsed_ms(&start) >= wait_ms) {
      errno = EWOULDBLOCK;
      return -1;
    }
    struct timespec pause = {0, pause_us * 1000};
    nanosleep(&pause, NULL);
    if (pause_us < 16000)
      pause_us *= 2;
  }
}

/* <provider>-<16 lowercase hex digits>.so, as sdt_store_file names objects. */
static int is_object_name(const char *name, size_t len) {
  if (len < 1 + 1 + 16 + 3 || memcmp(name + len - 3, ".so", 3) != 0)
    return 0;
  const char *hex = name + len - 3 - 16;
  for (int i = 0; i < 16; i++)
    if (!((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f')))
      return 0;
  return hex[-1] == '-' && sdt_is_name(name, (size_t)(hex - 1 - name));
}

/* .<object name>.<pid>.<counter>.tmp, as place_file names files being written. */
static int is_temporary_name(const char *name, size_t len) {
  if (len < 6 || name[0] != '.' || memcmp(name + len - 4, ".tmp", 4) != 0)
    return 0;
  size_t end = len - 4;
  for (int field = 0; field < 2; field++) { /* the counter, then the pid */
    size_t digits = 0;
    while (end > 1 && name[end - 1] >= '0' && name[end - 1] <= '9') {
      end--;
      digits++;
    }
    if (digits == 0 || end < 2 || name[end - 1] != '.')
      return 0;
    end--;
  }
  return is_object_name(name + 1, end - 1);
}

/* 1 if `name` is one of ours; sets *temporary. */
static int is_our_name(const char *name, int *temporary) {
  size_t len = strnlen(name, NAME_CAP);
  if (len >= NAME_CAP)
    return 0;
  *temporary = name[0] == '.';
  return *temporary ? is_temporary_name(name, len) : is_object_name(name, len);
}

/* 1 if the open directory is ours and private: nothing anywhere else is touched. */
static int private_dir(int dfd) {
  struct stat st;
  return fstat(dfd, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid() &&
         (st.st_mode & 077) == 0;
}

/* Fill `c` from the directory entry `name`: 0 if it is a regular file of ours. */
static int describe(int dfd, const char *name, int temporary, struct candidate *c) {
  struct stat st;
  if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
      st.st_uid != geteuid())
    return -1;
  memset(c, 0, sizeof(*c));
  c->ino = st.st_ino;
  c->mtime = st.st_mtime;
  c->temporary = temporary;
  snprintf(c->name, sizeof(c->name), "%s", name);
  return 0;
}

/* Our files in the directory, up to RECLAIM_MAX_FILES (or just their count if
 * `out` is NULL).  Returns the count, or -1. */
static long list_files(int dfd, struct candidate **out) {
  int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
  if (!dir) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  struct candidate *items = out ? calloc(RECLAIM_MAX_FILES, sizeof(*items)) : NULL;
  if (out && !items) {
    closedir(dir);
    return -1;
  }
  long count = 0;
  struct dirent *entry;
  int temporary;
  while ((entry = readdir(dir)) != NULL && (!out || count < RECLAIM_MAX_FILES)) {
    if (!is_our_name(entry->d_name, &temporary))
      continue;
    if (!out || describe(dfd, entry->d_name, temporary, &items[count]) == 0)
      count++;
  }
  closedir(dir);
  if (out)
    *out = items;
  return count;
}

static int by_inode(const void *a, const void *b) {
  ino_t x = ((const struct candidate *)a)->ino, y = ((const struct candidate *)b)->ino;
  return x < y ? -1 : x > y;
}

/* One line of a maps file: "start-end perms offset dev inode   path". */
static void mark_line(char *line, struct candidate *c, size_t n, const char *dir, size_t dirlen) {
  char *p = line;
  for (int field = 0; field < 4; field++) { /* address range, perms, offset, device */
    while (*p && *p != ' ')
      p++;
    while (*p == ' ')
      p++;
  }
  char *end;
  unsigned long long ino = strtoull(p, &end, 10);
  if (end == p || ino == 0)
    return;
  size_t lo = 0, hi = n; /* candidates are sorted by inode */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (c[mid].ino < (ino_t)ino)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (; lo < n && c[lo].ino == (ino_t)ino; lo++)
    c[lo].mapped = 1;

  while (*end == ' ')
    end++;
  if (strncmp(end, dir, dirlen) == 0 && end[dirlen] == '/')
    for (size_t i = 0; i < n; i++)
      if (strcmp(c[i].name, end + dirlen + 1) == 0)
        c[i].mapped = 1;
}

/* Big reads: the kernel formats maps afresh for each read() call. */
#define MAPS_BUFFER 65536

static void mark_maps_file(int fd, struct candidate *c, size_t n, const char *dir, char *buf) {
  size_t dirlen = strlen(dir), held = 0;
  for (;;) {
    ssize_t got = read(fd, buf + held, MAPS_BUFFER - 1 - held);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      break;
    held += (size_t)got;
    buf[held] = '\0';
    char *line = buf, *newline;
    while ((newline = memchr(line, '\n', held - (size_t)(line - buf))) != NULL) {
      *newline = '\0';
      mark_line(line, c, n, dir, dirlen);
      line = newline + 1;
    }
    held -= (size_t)(line - buf);
    if (held == MAPS_BUFFER - 1) /* no line is this long (paths are shorter than PATH_MAX) */
      held = 0;
    memmove(buf, line, held);
  }
  if (held > 0) {
    buf[held] = '\0';
    mark_line(buf, c, n, dir, dirlen);
  }
  close(fd);
}

/* Mark the candidates (sorted by inode) that a process maps: every process,
 * or only this one.  0, or -1 if /proc cannot be read. */
static int mark_mapped(struct candidate *c, size_t n, const char *dir, int only_self) {
  char *buf = malloc(MAPS_BUFFER);
  DIR *proc = only_self ? NULL : opendir("/proc");
  if (!buf || (!only_self && !proc)) {
    free(buf);
    if (proc)
      closedir(proc);
    return -1;
  }
  if (only_self) {
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
      mark_maps_file(fd, c, n, dir, buf);
    free(buf);
    return fd >= 0 ? 0 : -1;
  }
  struct dirent *entry;
  while ((entry = readdir(proc)) != NULL) {
    if (entry->d_name[0] < '1' || entry->d_name[0] > '9')
      continue;
    char maps[32];
    snprintf(maps, sizeof(maps), "%.20s/maps", entry->d_name);
    int fd = openat(dirfd(proc), maps, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) /* else the process exited, or is another user's (see above) */
      mark_maps_file(fd, c, n, dir, buf);
  }
  closedir(proc);
  free(buf);
  return 0;
}

/* Remove `c` if its name still holds the inode examined. */
static int remove_candidate(int dfd, const struct candidate *c) {
  struct stat st;
  if (fstatat(dfd, c->name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_ino != c->ino ||
      !S_ISREG(st.st_mode))
    return -1;
  return unlinkat(dfd, c->name, 0);
}

/* How many files the last collection kept, and when it ran (0 if never). */
static size_t read_state(int dfd, time_t *when) {
  *when = 0;
  int fd = openat(dfd, STATE_NAME, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return 0;
  char text[32] = "";
  struct stat st;
  size_t kept = 0;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
      read(fd, text, sizeof(text) - 1) > 0) {
    kept = strtoul(text, NULL, 10);
    *when = st.st_mtime;
  }
  close(fd);
  return kept;
}

static void write_state(int dfd, size_t kept) {
  int fd = openat(dfd, STATE_NAME, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return;
  struct stat st;
  char text[32];
  int len = snprintf(text, sizeof(text), "%zu\n", kept);
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
      ftruncate(fd, 0) == 0) {
    /* A short write reads back as a smaller count: the next collection only comes sooner. */
    ssize_t written = write(fd, text, (size_t)len);
    (void)written;
  }
  close(fd);
}

/* The collection proper, under the exclusive lock. */
static void collect(int dfd, const char *dir) {
  struct candidate *c = NULL;
  long n = list_files(dfd, &c);
  if (n <= 0) {
    free(c);
    return;
  }
  qsort(c, (size_t)n, sizeof(*c), by_inode);
  if (mark_mapped(c, (size_t)n, dir, 0) != 0) {
    free(c);
    return;
  }
  size_t kept = 0;
  time_t now = time(NULL);
  for (long i = 0; i < n; i++) {
    int garbage = !c[i].mapped && (!c[i].temporary || now - c[i].mtime >= ORPHAN_AGE);
    if (!garbage || remove_candidate(dfd, &c[i]) != 0)
      kept++;
  }
  write_state(dfd, kept);
  free(c);
}

int sdt_reclaim_after_load(int dfd, const char *dir, const char *loaded) {
  /* Judge mappings here only if the file just mapped shows in our own maps. */
  struct candidate self;
  int temporary;
  if (!private_dir(dfd) || !is_our_name(loaded, &temporary) ||
      describe(dfd, loaded, temporary, &self) != 0 || mark_mapped(&self, 1, dir, 1) != 0 ||
      !self.mapped)
    return 0;

  long ours = list_files(dfd, NULL);
  time_t last;
  size_t kept = read_state(dfd, &last);
  if (ours >= RECLAIM_MIN_FILES &&
      ((size_t)ours >= 2 * kept || time(NULL) - last >= RECLAIM_PERIOD) &&
      sdt_lock_dir(dfd, LOCK_EX, 0) == 0) {
    collect(dfd, dir);
    flock(dfd, LOCK_UN);
  }
  return 1;
}

void sdt_reclaim_file(const char *path, int wait_ms) {
  const char *slash = strrchr(path, '/');
  char dir[PATH_MAX];
  if (!slash || slash == path || (size_t)(slash - path) >= sizeof(dir))
    return;
  memcpy(dir, path, (size_t)(slash - path));
  dir[slash - path] = '\0';
  const char *name = slash + 1;
  int temporary;
  if (!is_our_name(name, &temporary) || temporary)
    return;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0)
    return;
  struct candidate c;
  if (private_dir(dfd) && sdt_lock_dir(dfd, LOCK_EX, wait_ms) == 0) {
    if (describe(dfd, name, 0, &c) == 0 && mark_mapped(&c, 1, dir, 0) == 0 && !c.mapped)
      remove_candidate(dfd, &c);
    flock(dfd, LOCK_UN);
  }
  close(dfd);
}
