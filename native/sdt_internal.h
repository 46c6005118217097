/*
 * sdt_internal.h - private interfaces between the parts of usdtkit's
 * libstapsdt: the ELF image writer (elf_image.c), SHA-256 (sha256.c), where
 * images are stored (storage.c) and the public ABI (provider.c).
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
};

/* Copy the image into a sealed memfd; 0 or -1 with an error in `err`. */
SDT_HIDDEN int sdt_store_memfd(const char *provider, const struct sdt_image *image,
                               struct sdt_stored *out, char *err, size_t errlen);

/* Store the image as <runtime dir>/<provider>-<hash>.so (reusing an identical
 * existing file); 0 or -1 with an error in `err`. */
SDT_HIDDEN int sdt_store_file(const char *provider, const struct sdt_image *image,
                              struct sdt_stored *out, char *err, size_t errlen);

/* 1 if this kernel supports memfd_create(), else 0. */
SDT_HIDDEN int sdt_memfd_supported(void);

#endif /* USDTKIT_SDT_INTERNAL_H */
