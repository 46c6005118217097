/*
 * provider.c - the libstapsdt ABI: providers, probes, load/unload, firing.
 *
 * Memory layout: the library allocates every SDTProvider_t and SDTProbe_t.
 * Each is the first member of a larger private struct, so the public prefix
 * keeps the documented layout while private state (semaphore address,
 * probe count, ...) lives behind it.  Probes form a singly linked list in
 * declaration order (`provider->probes`), which is also the order of the
 * functions and notes in the generated image.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sdt_internal.h"

struct probe_node {
  SDTProbeList_t list; /* first: &list.probe is the SDTProbe_t * handed out */
  volatile uint16_t *semaphore;
};

struct provider_impl {
  SDTProvider_t pub; /* first: &pub is the SDTProvider_t * handed out */
  struct probe_node *tail;
  size_t probe_count;
  int error_is_static;
  char *own_file; /* file mode: the last object loaded, for providerDestroy to reclaim */
};

/* How long providerDestroy waits for loads in progress before leaving its
 * file to a later collection. */
#define DESTROY_LOCK_WAIT_MS 500

static char out_of_memory_message[] = "out of memory";

/* A probe function is a 5-byte NOP then `ret`.  A tracer already attached to the
 * file (by path) may have patched the NOP in this very mapping (int3, or a call
 * to a uprobe trampoline) before dlsym() returns, so only the `ret` is checked. */
#define SITE_RET_OFFSET 5
#define SITE_RET 0xc3

static struct provider_impl *impl_of(SDTProvider_t *provider) {
  return (struct provider_impl *)provider;
}

static struct probe_node *node_of(SDTProbe_t *probe) { return (struct probe_node *)probe; }

static int is_name_start(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static int is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }

int sdt_is_name(const char *name, size_t len) {
  if (len == 0 || len > SDT_MAX_NAME_LENGTH || !is_name_start(name[0]))
    return 0;
  for (size_t i = 1; i < len; i++)
    if (!is_name_char(name[i]))
      return 0;
  return 1;
}

/* [A-Za-z_][A-Za-z0-9_]*, 1..SDT_MAX_NAME_LENGTH bytes. */
static int valid_name(const char *name) {
  return name && sdt_is_name(name, strnlen(name, SDT_MAX_NAME_LENGTH + 1));
}

/* A printable, bounded rendering of a caller-supplied name for messages. */
static void quote_name(const char *name, char *out, size_t outlen) {
  if (!name) {
    snprintf(out, outlen, "NULL");
    return;
  }
  size_t j = 0;
  out[j++] = '\'';
  for (size_t i = 0; name[i] && j + 5 < outlen; i++) {
    unsigned char c = (unsigned char)name[i];
    out[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    if (i == SDT_MAX_NAME_LENGTH + 8) {
      out[j++] = '.';
      out[j++] = '.';
      break;
    }
  }
  out[j++] = '\'';
  out[j] = '\0';
}

static void clear_error(struct provider_impl *p) {
  if (!p->error_is_static)
    free(p->pub.error);
  p->pub.error = NULL;
  p->error_is_static = 0;
  p->pub.lastError = noError;
}

static void set_error(struct provider_impl *p, SDTError_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_error(struct provider_impl *p, SDTError_t code, const char *fmt, ...) {
  char detail[1536];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof(detail), fmt, ap);
  va_end(ap);

  clear_error(p);
  p->pub.lastError = code;
  size_t size = strlen(p->pub.name) + strlen(detail) + 16;
  char *message = malloc(size);
  if (!message) {
    p->pub.error = out_of_memory_message;
    p->error_is_static = 1;
    return;
  }
  snprintf(message, size, "provider '%s': %s", p->pub.name, detail);
  p->pub.error = message;
}

static int valid_type(int type) {
  switch (type) {
  case uint8:
  case int8:
  case uint16:
  case int16:
  case uint32:
  case int32:
  case uint64:
  case int64:
    return 1;
  default:
    return 0;
  }
}

SDT_API SDTProvider_t *providerInit(const char *name) {
  if (!valid_name(name))
    return NULL;
  struct provider_impl *p = calloc(1, sizeof(*p));
  if (!p)
    return NULL;
  p->pub.name = strdup(name);
  if (!p->pub.name) {
    free(p);
    return NULL;
  }
  p->pub.lastError = noError;
  p->pub._memfd = -1;
  p->pub._use_memfd = 0;
  return &p->pub;
}

SDT_API int providerUseMemfd(SDTProvider_t *provider, int option) {
  if (!provider || (option != 0 && option != 1))
    return 0;
  if (option == 1 && !sdt_memfd_supported())
    return 0;
  provider->_use_memfd = option;
  return 1;
}

SDT_API SDTProbe_t *providerAddProbe(SDTProvider_t *provider, const char *name,
                                     int argCount, ...) {
  if (!provider)
    return NULL;
  struct provider_impl *p = impl_of(provider);
  char quoted[SDT_MAX_NAME_LENGTH + 24];
  clear_error(p);

  if (!valid_name(name)) {
    quote_name(name, quoted, sizeof(quoted));
    set_error(p, invalidArgumentError,
              "invalid probe name %s: use [A-Za-z_][A-Za-z0-9_]*, at most %d bytes", quoted,
              SDT_MAX_NAME_LENGTH);
    return NULL;
  }
  if (argCount < 0 || argCount > MAX_ARGUMENTS) {
    set_error(p, invalidArgumentError, "probe '%s' has %d arguments; at most %d are allowed",
              name, argCount, MAX_ARGUMENTS);
    return NULL;
  }
  if (p->probe_count >= SDT_MAX_PROBES) {
    set_error(p, invalidArgumentError, "cannot add probe '%s': at most %d probes", name,
              SDT_MAX_PROBES);
    return NULL;
  }
  for (SDTProbeList_t *it = provider->probes; it; it = it->next) {
    if (strcmp(it->probe.name, name) == 0) {
      set_error(p, invalidArgumentError, "duplicate probe name '%s'", name);
      return NULL;
    }
  }

  ArgType_t types[MAX_ARGUMENTS] = {noarg, noarg, noarg, noarg, noarg, noarg};
  va_list ap;
  va_start(ap, argCount);
  for (int i = 0; i < argCount; i++)
    types[i] = (ArgType_t)va_arg(ap, int);
  va_end(ap);
  for (int i = 0; i < argCount; i++) {
    if (!valid_type((int)types[i])) {
      set_error(p, invalidArgumentError,
                "probe '%s': argument %d has invalid type %d (use +-1, +-2, +-4 or +-8)", name,
                i + 1, (int)types[i]);
      return NULL;
    }
  }

  struct probe_node *node = calloc(1, sizeof(*node));
  if (!node) {
    set_error(p, invalidArgumentError, "cannot add probe '%s': out of memory", name);
    return NULL;
  }
  node->list.probe.name = strdup(name);
  if (!node->list.probe.name) {
    free(node);
    set_error(p, invalidArgumentError, "cannot add probe '%s': out of memory", name);
    return NULL;
  }
  memcpy(node->list.probe.argFmt, types, sizeof(types));
  node->list.probe._fire = NULL;
  node->list.probe.provider = provider;
  node->list.probe.argCount = argCount;
  node->list.next = NULL;
  node->semaphore = NULL;

  if (p->tail)
    p->tail->list.next = &node->list;
  else
    provider->probes = &node->list;
  p->tail = node;
  p->probe_count++;
  return &node->list.probe;
}

/* Build the image of the provider's current probes. */
static int build_image(struct provider_impl *p, struct sdt_image *image) {
  struct sdt_image_probe *defs = calloc(p->probe_count ? p->probe_count : 1, sizeof(*defs));
  if (!defs) {
    set_error(p, elfCreationError, "cannot create ELF image: out of memory");
    return -1;
  }
  size_t i = 0;
  for (SDTProbeList_t *it = p->pub.probes; it; it = it->next, i++) {
    defs[i].name = it->probe.name;
    defs[i].arg_count = it->probe.argCount;
    defs[i].arg_types = it->probe.argFmt;
  }
  const char *why = "unknown error";
  int rc = sdt_image_build(p->pub.name, defs, p->probe_count, image, &why);
  free(defs);
  if (rc != 0)
    set_error(p, elfCreationError, "cannot create ELF image: %s", why);
  return rc;
}

static void forget_loaded_state(struct provider_impl *p) {
  for (SDTProbeList_t *it = p->pub.probes; it; it = it->next) {
    it->probe._fire = NULL;
    node_of(&it->probe)->semaphore = NULL;
  }
}

static void release_storage(struct provider_impl *p) {
  if (p->pub._memfd >= 0)
    close(p->pub._memfd);
  p->pub._memfd = -1;
  free(p->pub._filename);
  p->pub._filename = NULL;
}

SDT_API int providerLoad(SDTProvider_t *provider) {
  if (!provider)
    return -1;
  struct provider_impl *p = impl_of(provider);
  clear_error(p);
  if (provider->_handle) {
    set_error(p, invalidArgumentError,
              "already loaded; unload it first (a reload also picks up new probes)");
    return -1;
  }

  struct sdt_image image;
  if (build_image(p, &image) != 0)
    return -1;

  struct sdt_stored stored = {NULL, -1, -1};
  char err[1536] = "";
  int rc = provider->_use_memfd ? sdt_store_memfd(provider->name, &image, &stored, err, sizeof(err))
                                : sdt_store_file(provider->name, &image, &stored, err, sizeof(err));
  if (rc != 0) {
    sdt_image_free(&image);
    set_error(p, tmpCreationError, "cannot store the ELF image: %s", err);
    return -1;
  }
  provider->_filename = stored.path;
  provider->_memfd = stored.memfd;

  dlerror();
  void *handle = dlopen(stored.path, RTLD_NOW | RTLD_LOCAL);
  int seen = sdt_store_done(&stored, handle != NULL);
  if (!handle) {
    const char *msg = dlerror();
    set_error(p, sharedLibraryOpenError, "cannot dlopen %s: %s", stored.path,
              msg ? msg : "unknown error");
    release_storage(p);
    sdt_image_free(&image);
    return -1;
  }

  size_t i = 0;
  for (SDTProbeList_t *it = provider->probes; it; it = it->next, i++) {
    dlerror();
    void *fn = dlsym(handle, it->probe.name);
    uint64_t link_addr = image.text_vaddr + i * SDT_FUNC_SLOT;
    uintptr_t base = (uintptr_t)fn - (uintptr_t)link_addr;
    if (!fn || (uintptr_t)fn < link_addr || base % 4096 != 0 ||
        ((const uint8_t *)fn)[SITE_RET_OFFSET] != SITE_RET) {
      const char *msg = fn ? "symbol does not point at a probe site" : dlerror();
      set_error(p, symbolLoadingError, "cannot resolve probe '%s' in %s: %s", it->probe.name,
                stored.path, msg ? msg : "symbol not found");
      forget_loaded_state(p);
      dlclose(handle);
      release_storage(p);
      sdt_image_free(&image);
      return -1;
    }
    it->probe._fire = fn;
    node_of(&it->probe)->semaphore =
        (volatile uint16_t *)(base + (uintptr_t)(image.probes_vaddr + i * 2));
  }
  provider->_handle = handle;
  sdt_image_free(&image);
  if (!provider->_use_memfd) {
    free(p->own_file);
    p->own_file = seen ? strdup(stored.path) : NULL;
  }
  /* Mapped, and no probe can have fired yet: a tracer that started this
   * process attaches now, so it sees the first hit. */
  sdt_rendezvous(provider->name, provider->_filename, provider->_memfd);
  return 0;
}

SDT_API int providerUnload(SDTProvider_t *provider) {
  if (!provider)
    return -1;
  struct provider_impl *p = impl_of(provider);
  clear_error(p);
  if (!provider->_handle)
    return 0;
  forget_loaded_state(p);
  void *handle = provider->_handle;
  provider->_handle = NULL;
  dlerror();
  int rc = dlclose(handle);
  /* Close the memfd only after dlclose: glibc matches dlopen() names against
   * loaded objects, so the /proc/self/fd/N name must stay unique while the
   * object is loaded. */
  char path_copy[4096];
  snprintf(path_copy, sizeof(path_copy), "%s", provider->_filename ? provider->_filename : "");
  release_storage(p);
  if (rc != 0) {
    const char *msg = dlerror();
    set_error(p, sharedLibraryCloseError, "cannot dlclose %s: %s", path_copy,
              msg ? msg : "unknown error");
    return -1;
  }
  return 0;
}

SDT_API void providerDestroy(SDTProvider_t *provider) {
  if (!provider)
    return;
  struct provider_impl *p = impl_of(provider);
  providerUnload(provider);
  if (p->own_file) {
    sdt_reclaim_file(p->own_file, DESTROY_LOCK_WAIT_MS);
    free(p->own_file);
  }
  SDTProbeList_t *it = provider->probes;
  while (it) {
    SDTProbeList_t *next = it->next;
    free(it->probe.name);
    free(node_of(&it->probe));
    it = next;
  }
  clear_error(p);
  free(provider->name);
  free(p);
}

typedef void (*probe_fn)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);

SDT_API void probeFire(SDTProbe_t *probe, ...) {
  if (!probe)
    return;
  void *site = probe->_fire;
  int count = probe->argCount;
  if (!site || count < 0 || count > MAX_ARGUMENTS)
    return;
  uint64_t a[MAX_ARGUMENTS] = {0, 0, 0, 0, 0, 0};
  va_list ap;
  va_start(ap, probe);
  for (int i = 0; i < count; i++)
    a[i] = va_arg(ap, uint64_t);
  va_end(ap);
  probe_fn fn;
  memcpy(&fn, &site, sizeof(fn));
  fn(a[0], a[1], a[2], a[3], a[4], a[5]);
}

SDT_API int probeIsEnabled(SDTProbe_t *probe) {
  if (!probe)
    return 0;
  volatile uint16_t *semaphore = node_of(probe)->semaphore;
  return semaphore && *semaphore != 0;
}

SDT_API volatile uint16_t *probeSemaphore(SDTProbe_t *probe) {
  return probe ? node_of(probe)->semaphore : NULL;
}

SDT_API int providerElfImage(SDTProvider_t *provider, void **image, uint64_t *size) {
  if (image)
    *image = NULL;
  if (size)
    *size = 0;
  if (!provider)
    return -1;
  struct provider_impl *p = impl_of(provider);
  clear_error(p);
  if (!image || !size) {
    set_error(p, invalidArgumentError, "providerElfImage needs non-NULL image and size");
    return -1;
  }
  struct sdt_image built;
  if (build_image(p, &built) != 0)
    return -1;
  *image = built.data;
  *size = built.size;
  return 0;
}

SDT_API void providerFreeImage(void *image) { free(image); }
