/*
 * sdt_internal.h - private interfaces between the parts of usdtkit's
 * libstapsdt: the ELF image writer (elf_image.c), SHA-256 (sha256.c), where
 * images are stored (storage.c), removing stored files no process maps any
 * more (reclaim.c), announcing loads to a tracer that started the process
 * (rendezvous.c) and the public ABI (provider.c).
 */
#ifndef USDTKIT_SDT_INTERNAL_H
#define USDTKIT_SDT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "libstapsdt.h"

#define SDT_HIDDEN __attribute__((visibility("hidden")))

/* Upper bound on probes per provider, which keeps every size computation in
 * the image writer far from overflow. */
#define SDT_MAX_PROBES 65536

/* ---- ELF image ---------------------------------------------------------- */

/* One probe as the image writer sees it. */
struct sdt_image_probe {
  const char *name;
  int arg_count;
  const ArgType_t *arg_types;
};

/* A generated image and where its probes ended up (link-time addresses,
 * which the loader shifts by the load base). */
struct sdt_image {
  uint8_t *data;
  size_t size;
  uint64_t text_vaddr;   /* probe i's function (and USDT site) is at text_vaddr + i * SDT_FUNC_SLOT */
  uint64_t probes_vaddr; /* probe i's semaphore is at probes_vaddr + i * 2 */
};

#define SDT_FUNC_SLOT 16

/* Build the image; 0 on success, -1 with *why set to a static message. */
SDT_HIDDEN int sdt_image_build(const char *provider, const struct sdt_image_probe *probes,
                               size_t count, struct sdt_image *out, const char **why);
SDT_HIDDEN void sdt_image_free(struct sdt_image *image);

/* Argument spec string of a probe, e.g. "-8@%rdi 4@%esi"; `out` needs at
 * least SDT_ARGSPEC_MAX bytes.  Returns the length. */
#define SDT_ARGSPEC_MAX 64
SDT_HIDDEN size_t sdt_argspec(int arg_count, const ArgType_t *types, char *out);

/* ---- SHA-256 ------------------------------------------------------------ */

SDT_HIDDEN void sdt_sha256(const void *data, size_t size, uint8_t digest[32]);

/* ---- storage ------------------------------------------------------------ */

/* Where a stored image can be dlopen()ed from. */
struct sdt_stored {
  char *path; /* malloc'ed */
  int memfd;  /* -1 in file mode */
  int dirfd;  /* file mode: the runtime directory, share-locked until sdt_store_done; else -1 */
};

/* Copy the image into a sealed memfd; 0 or -1 with an error in `err`. */
SDT_HIDDEN int sdt_store_memfd(const char *provider, const struct sdt_image *image,
                               struct sdt_stored *out, char *err, size_t errlen);

/* Store the image as <runtime dir>/<provider>-<hash>.so (reusing an identical
 * existing file); 0 or -1 with an error in `err`.  On success the directory
 * stays share-locked (out->dirfd) so the file cannot be reclaimed before the
 * caller has mapped it; the caller then calls sdt_store_done. */
SDT_HIDDEN int sdt_store_file(const char *provider, const struct sdt_image *image,
                              struct sdt_stored *out, char *err, size_t errlen);

/* After the caller's dlopen() of a stored image (mapped = 1) or its failure:
 * release the directory lock and, if mapped, reclaim garbage (reclaim.c).
 * Returns 1 if this process's mapping of the file is visible in its maps,
 * which sdt_reclaim_file relies on, else 0.  No-op in memfd mode. */
SDT_HIDDEN int sdt_store_done(struct sdt_stored *stored, int mapped);

/* 1 if this kernel supports memfd_create(), else 0. */
SDT_HIDDEN int sdt_memfd_supported(void);

/* ---- reclaiming runtime files (reclaim.c) ------------------------------- */

/* flock() the directory with LOCK_SH or LOCK_EX, retrying for up to wait_ms
 * milliseconds (0: one try); 0, or -1 with errno set. */
SDT_HIDDEN int sdt_lock_dir(int dfd, int operation, int wait_ms);

/* Once this process has mapped `loaded` (a name in the unlocked directory
 * `dfd`, whose path is `dir`): remove the files no process maps, when enough
 * have accumulated.  Returns 1 if this process's mapping is visible in
 * /proc/self/maps (so mappings can be judged here), else 0. */
SDT_HIDDEN int sdt_reclaim_after_load(int dfd, const char *dir, const char *loaded);

/* Remove the object at `path` unless some process maps it, waiting up to
 * wait_ms for loads in progress. */
SDT_HIDDEN void sdt_reclaim_file(const char *path, int wait_ms);

/* ---- announcing a load to a tracer (rendezvous.c) ----------------------- */

/* After a provider's object is loaded from `path` (or the memfd `memfd`, or
 * -1 in file mode): if a tracer that started this process left a rendezvous
 * in the environment, tell it about the object and wait, bounded, until it
 * has attached.  Keeps errno; never fails. */
SDT_HIDDEN void sdt_rendezvous(const char *provider, const char *path, int memfd);

/* ---- names (provider.c) ------------------------------------------------- */

/* 1 if name[0..len) is [A-Za-z_][A-Za-z0-9_]*, 1..SDT_MAX_NAME_LENGTH bytes. */
SDT_HIDDEN int sdt_is_name(const char *name, size_t len);

#endif /* USDTKIT_SDT_INTERNAL_H */
