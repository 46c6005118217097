/*
 * libstapsdt.h - usdtkit's own implementation of the libstapsdt ABI.
 *
 * Declare USDT (SystemTap SDT) probes at run time: a provider holds probes,
 * providerLoad() generates a tiny x86_64 ELF shared object with one function
 * and one .note.stapsdt entry per probe, dlopen()s it, and probeFire() calls
 * the probe's function, whose first instruction is the USDT site.  Any USDT
 * tracer (bpftrace, bcc, usdtkit, perf, SystemTap) can attach to it.
 *
 * Written from scratch to the public ABI of libstapsdt: the function
 * signatures, enum values and the documented prefix of the two structs below
 * are what bindings in other languages (such as Python's `stapsdt`) rely on.
 * Additions are marked "usdtkit extension".
 *
 * Lifecycle
 *   SDTProvider_t *p = providerInit("myapp");
 *   SDTProbe_t *req = providerAddProbe(p, "request", 2, int64, uint64);
 *   if (providerLoad(p) != 0) fprintf(stderr, "%s\n", p->error);
 *   if (probeIsEnabled(req)) probeFire(req, (int64_t)-1, (uint64_t)42);
 *   providerUnload(p);            // optional: providerDestroy() unloads
 *   providerDestroy(p);
 *
 * Semantics worth knowing
 *   - Probes added after providerLoad() exist (their pointer is valid) but do
 *     not fire until the provider is unloaded and loaded again.
 *   - probeFire() always executes the probe site (a 5-byte NOP) when the
 *     provider is loaded, so a tracer that does not use semaphores still
 *     sees the event; guard expensive argument preparation with
 *     probeIsEnabled(), which reads the probe's semaphore (a memory load).
 *   - Every call accepts NULL and bad arguments without crashing: pointer
 *     results are NULL and int results -1 (or 0 for predicates), and when a
 *     provider exists its `errno`/`error` fields say what went wrong.
 *   - A process started by a tracer that hands it a rendezvous
 *     (USDTKIT_RENDEZVOUS, see rendezvous.c) announces each providerLoad()
 *     to that tracer and waits, at most 5 seconds, until the tracer has
 *     attached, so the first probe fired is seen.  Otherwise it never waits.
 *   - Calls on one provider must not run concurrently with each other
 *     (firing concurrently from many threads is fine); different providers
 *     are independent.
 */
#ifndef USDTKIT_LIBSTAPSDT_H
#define USDTKIT_LIBSTAPSDT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SDT_API __attribute__((visibility("default")))
#else
#define SDT_API
#endif

/* At most this many arguments per probe (the SysV integer argument registers). */
#define MAX_ARGUMENTS 6

/* usdtkit extension: longest provider or probe name accepted, in bytes. */
#define SDT_MAX_NAME_LENGTH 64

typedef enum {
  noError = -1,
  elfCreationError = 0,
  tmpCreationError = 1,
  sharedLibraryOpenError = 2,
  symbolLoadingError = 3,
  sharedLibraryCloseError = 4,
  /* usdtkit extension: a call with bad arguments or in the wrong state
   * (invalid name, duplicate probe, too many arguments, unknown type). */
  invalidArgumentError = 5,
} SDTError_t;

/* Argument types: the absolute value is the size in bytes, negative = signed. */
typedef enum {
  noarg = 0,
  uint8 = 1,
  int8 = -1,
  uint16 = 2,
  int16 = -2,
  uint32 = 4,
  int32 = -4,
  uint64 = 8,
  int64 = -8,
} ArgType_t;

struct SDTProvider;

typedef struct SDTProbe {
  char *name;
  ArgType_t argFmt[MAX_ARGUMENTS];
  void *_fire;                  /* the probe's function while loaded, else NULL */
  struct SDTProvider *provider;
  int argCount;
} SDTProbe_t;

typedef struct SDTProbeList_ {
  SDTProbe_t probe;
  struct SDTProbeList_ *next;
} SDTProbeList_t;

/*
 * The field at offset 16 is called `errno` in libstapsdt.  <errno.h> defines
 * errno as a macro, so it is declared here under both that name and
 * `lastError` (same storage); code that includes <errno.h> uses lastError.
 */
#pragma push_macro("errno")
#undef errno
typedef struct SDTProvider {
  char *name;
  SDTProbeList_t *probes;
  union {
    SDTError_t errno;
    SDTError_t lastError;
  };
  char *error;                  /* message for the last error, or NULL */
  void *_handle;                /* dlopen() handle while loaded, else NULL */
  char *_filename;              /* path given to dlopen() while loaded */
  int _memfd;                   /* memfd while loaded in memfd mode, else -1 */
  int _use_memfd;               /* 1: memfd mode, 0: file mode (default) */
} SDTProvider_t;
#pragma pop_macro("errno")

/* Create a provider; NULL if `name` is not [A-Za-z_][A-Za-z0-9_]* (at most
 * SDT_MAX_NAME_LENGTH bytes) or memory is exhausted. */
SDT_API SDTProvider_t *providerInit(const char *name);

/* 1 = load the object from a memfd, 0 = from a file in a private runtime
 * folder (default).  Takes effect at the next providerLoad().  Returns 1 if
 * the option was accepted, 0 otherwise. */
SDT_API int providerUseMemfd(SDTProvider_t *provider, int option);

/* Declare a probe: `argCount` (0..6) ArgType_t values follow.  Returns NULL
 * and sets the provider's error for a bad or duplicate name, more than 6
 * arguments or an unknown type. */
SDT_API SDTProbe_t *providerAddProbe(SDTProvider_t *provider, const char *name,
                                     int argCount, ...);

/* Generate, store and dlopen() the object; 0 on success, -1 on error
 * (including "already loaded": unload first to pick up new probes). */
SDT_API int providerLoad(SDTProvider_t *provider);

/* dlclose() the object and close the memfd; 0 on success (also when not
 * loaded), -1 on error.  The file of file mode stays (other processes and
 * tracers attached by path use it; reloading the same probes reuses it). */
SDT_API int providerUnload(SDTProvider_t *provider);

/* Unload if needed and free the provider and all its probes.  In file mode,
 * also remove the last object loaded when no process maps it any more (the
 * loads of any process remove such files too, see reclaim.c). */
SDT_API void providerDestroy(SDTProvider_t *provider);

/* Call the probe's site with `argCount` 64-bit values (pass each argument as
 * a 64-bit integer or pointer).  No effect unless the provider is loaded. */
SDT_API void probeFire(SDTProbe_t *probe, ...);

/* 1 if a tracer has enabled the probe (its semaphore is nonzero), else 0. */
SDT_API int probeIsEnabled(SDTProbe_t *probe);

/* usdtkit extension: the address of the probe's 16-bit semaphore inside the
 * loaded object (so a caller can poll it without a function call), or NULL
 * when the probe is not loaded.  Valid until the provider is unloaded. */
SDT_API volatile uint16_t *probeSemaphore(SDTProbe_t *probe);

/* usdtkit extension: build the ELF image the next providerLoad() would load,
 * without storing or loading it.  On success returns 0 and sets *image (free
 * it with providerFreeImage) and *size; the bytes depend only on the
 * provider name and its probes, in declaration order. */
SDT_API int providerElfImage(SDTProvider_t *provider, void **image, uint64_t *size);
SDT_API void providerFreeImage(void *image);

#ifdef __cplusplus
}
#endif

#endif /* USDTKIT_LIBSTAPSDT_H */
