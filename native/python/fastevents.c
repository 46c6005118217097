/* usdtkit._native._fastevents: read event records out of a BPF ring buffer and decode them in C.
 *
 * Decoder(spec) knows one record layout (usdtkit.collect.records.RecordDecoder's, described by
 * usdtkit.collect.native) and turns records into what the Python decoder makes of them:
 *
 *   event(data) -> Event        the same Event object RecordDecoder.decode builds
 *   json(data) -> bytes         json.dumps(event.to_json(), ensure_ascii=False) + "\n", as UTF-8
 *   drain_json(consumer, producer, mask, budget_s, fd, limit) -> (delivered, stopped)
 *   drain_events(consumer, producer, mask, budget_s, append, on_event, session) -> (delivered, stopped)
 *
 * The drains consume a ring buffer as usdtkit.bpf.ringbuf does (see there for the layout): `consumer`
 * and `producer` are its two mmap objects, `mask` the data size less one.  drain_json writes lines to
 * `fd` in chunks of about a megabyte, stopping after `limit` records (negative: no limit); drain_events
 * hands each Event to `append` and then `on_event` (either may be None) and stops when a callback
 * raises (the exception propagates, the record counts as consumed) or sets `session._stop`.  Both
 * return within about `budget_s`.  `delivered` (an attribute) counts every record handed over.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RB_BUSY (1U << 31)
#define RB_DISCARD (1U << 30)
#define RB_HEADER 8
#define MAX_SLOTS 8
#define MAX_ARGS 16
#define FLUSH_AT (1 << 20)
#define CLOCK_EVERY 64
#define N_FIELDS 11

/* Event's fields, in the order of its __init__ (usdtkit.collect.results.Event). */
static const char *const FIELDS[N_FIELDS] = {"probe", "pid", "tid", "timestamp_ns", "cpu", "comm", "args", "retval",
                                             "latency_ns", "stack", "truncated"};

static PyObject *cut_mark;  /* "\u2026", after a string longer than the bytes kept of it */

typedef struct {
    PyObject *label;       /* str */
    PyObject *label_json;  /* bytes: the label as a JSON string */
    int arg_count;
    uint32_t signed_mask;
    int nslots;
    int slot[MAX_SLOTS], slot_arg[MAX_SLOTS];
    int is_return, has_latency;
} Probe;

typedef struct {
    PyObject_HEAD
    Py_ssize_t size;
    Py_ssize_t off_ts, off_latency, off_retval, off_pid, off_tid, off_probe, off_cpu, off_errs, off_stack,
        off_args, off_comm, comm_len, str_len, limit;
    Py_ssize_t nstr, str_off[MAX_SLOTS];
    Py_ssize_t nprobes;
    Probe *probes;
    PyObject *event_type, *stack_of;
    Py_ssize_t field_offset[N_FIELDS];
    char last_comm[64];
    PyObject *comm_str;   /* the str of last_comm: a process's comm rarely changes between records */
    struct u32_cache { uint32_t value; PyObject *obj; } pid_cache, tid_cache;  /* likewise */
    unsigned long long delivered;
    char *out;
    size_t out_len, out_cap;
} Decoder;

/* ------------------------------------------------------------------ output buffer */
static int reserve(Decoder *d, size_t more)
{
    if (d->out_len + more <= d->out_cap)
        return 0;
    size_t cap = d->out_cap ? d->out_cap : (FLUSH_AT + 65536);
    while (cap < d->out_len + more)
        cap *= 2;
    char *grown = PyMem_Realloc(d->out, cap);
    if (!grown) {
        PyErr_NoMemory();
        return -1;
    }
    d->out = grown;
    d->out_cap = cap;
    return 0;
}

static int put(Decoder *d, const char *s, size_t n)
{
    if (reserve(d, n) < 0)
        return -1;
    memcpy(d->out + d->out_len, s, n);
    d->out_len += n;
    return 0;
}

#define PUTS(d, lit) put((d), (lit), sizeof(lit) - 1)

static int put_u64(Decoder *d, uint64_t v)
{
    char tmp[24];
    int i = 24;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put(d, tmp + i, (size_t)(24 - i));
}

static int put_i64(Decoder *d, int64_t v)
{
    if (v < 0) {
        if (PUTS(d, "-") < 0)
            return -1;
        return put_u64(d, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(d, (uint64_t)v);
}

/* UTF-8 text as a JSON string the way json.dumps(ensure_ascii=False) writes it: quotes, backslashes
 * and control characters escaped, everything else as is. */
static int put_json_text(Decoder *d, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (reserve(d, n * 6 + 2) < 0)
        return -1;
    char *o = d->out + d->out_len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            *o++ = 'u'; *o++ = '0'; *o++ = '0'; *o++ = hex[c >> 4]; *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    d->out_len = (size_t)(o - d->out);
    return 0;
}

static int put_json_str(Decoder *d, PyObject *str)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(str, &n);
    return s ? put_json_text(d, s, (size_t)n) : -1;
}

/* ------------------------------------------------------------------ record fields */
static uint64_t u64_at(const char *rec, Py_ssize_t off) { uint64_t v; memcpy(&v, rec + off, 8); return v; }
static uint32_t u32_at(const char *rec, Py_ssize_t off) { uint32_t v; memcpy(&v, rec + off, 4); return v; }

static size_t c_len(const char *s, size_t cap)
{
    const char *nul = memchr(s, 0, cap);
    return nul ? (size_t)(nul - s) : cap;
}

static int is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 0;
    return 1;
}

/* The str Python's decode("utf-8", errors="replace") makes of these bytes. */
static PyObject *text_of(const char *s, size_t n)
{
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "replace");
}

static PyObject *comm_of(Decoder *d, const char *rec)
{
    const char *c = rec + d->off_comm;
    size_t n = c_len(c, (size_t)d->comm_len);
    if (d->comm_str && memcmp(d->last_comm, c, (size_t)d->comm_len) == 0) {
        Py_INCREF(d->comm_str);
        return d->comm_str;
    }
    PyObject *s = text_of(c, n);
    if (!s)
        return NULL;
    Py_XSETREF(d->comm_str, Py_NewRef(s));
    memcpy(d->last_comm, c, (size_t)d->comm_len);
    return s;
}

/* A new reference to the int `value`, the same object as last time when the value is the same. */
static PyObject *cached_u32(struct u32_cache *cache, uint32_t value)
{
    if (!cache->obj || cache->value != value) {
        PyObject *obj = PyLong_FromUnsignedLong(value);
        if (!obj)
            return NULL;
        Py_XSETREF(cache->obj, obj);
        cache->value = value;
    }
    return Py_NewRef(cache->obj);
}

static Probe *probe_of(Decoder *d, const char *rec)
{
    uint32_t index = u32_at(rec, d->off_probe);
    if (index >= (uint32_t)d->nprobes) {
        PyErr_Format(PyExc_ValueError, "record names probe %u of %zd", index, d->nprobes);
        return NULL;
    }
    return &d->probes[index];
}

static int slot_for(Probe *p, int arg)
{
    for (int k = 0; k < p->nslots; k++)
        if (p->slot_arg[k] == arg)
            return p->slot[k];
    return -1;
}

/* The string in slot `slot`: its bytes up to `limit`, and whether it was longer. */
static size_t slot_text(Decoder *d, const char *rec, int slot, int *cut)
{
    size_t n = c_len(rec + d->str_off[slot], (size_t)d->str_len);
    *cut = n > (size_t)d->limit;
    return *cut ? (size_t)d->limit : n;
}

static PyObject *frames_of(Decoder *d, const char *rec)
{
    if (d->stack_of == Py_None)
        Py_RETURN_NONE;
    int32_t stack;
    memcpy(&stack, rec + d->off_stack, 4);
    return PyObject_CallFunction(d->stack_of, "iI", (int)stack, u32_at(rec, d->off_pid));
}

/* ------------------------------------------------------------------ Event */
static PyObject *build_event(Decoder *d, const char *rec)
{
    Probe *p = probe_of(d, rec);
    if (!p)
        return NULL;
    uint32_t errs = u32_at(rec, d->off_errs);
    PyObject *args = PyTuple_New(p->arg_count), *truncated = NULL, *comm = NULL, *frames = NULL, *event = NULL;
    PyObject *cut_list = NULL;
    if (!args)
        return NULL;
    for (int i = 0; i < p->arg_count; i++) {
        PyObject *v;
        int slot = slot_for(p, i);
        if (slot >= 0) {  /* as in RecordDecoder: a cut string is listed even where errs then hides it */
            int cut;
            size_t n = slot_text(d, rec, slot, &cut);
            v = text_of(rec + d->str_off[slot], n);
            if (v && cut)
                Py_SETREF(v, PyUnicode_Concat(v, cut_mark));
            if (v && cut) {
                PyObject *idx = PyLong_FromLong(i);
                if ((!cut_list && !(cut_list = PyList_New(0))) || !idx || PyList_Append(cut_list, idx) < 0) {
                    Py_XDECREF(idx);
                    Py_DECREF(v);
                    goto done;
                }
                Py_DECREF(idx);
            }
        } else {
            uint64_t raw = u64_at(rec, d->off_args + 8 * i);
            v = (p->signed_mask & (1U << i)) ? PyLong_FromLongLong((long long)raw)
                                              : PyLong_FromUnsignedLongLong(raw);
        }
        if (v && (errs & (1U << i)))
            Py_SETREF(v, Py_NewRef(Py_None));
        if (!v)
            goto done;
        PyTuple_SET_ITEM(args, i, v);
    }
    truncated = cut_list ? PyList_AsTuple(cut_list) : PyTuple_New(0);
    if (!truncated || !(comm = comm_of(d, rec)) || !(frames = frames_of(d, rec)))
        goto done;
    {
        PyObject *retval = p->is_return ? PyLong_FromUnsignedLongLong(u64_at(rec, d->off_retval)) : Py_NewRef(Py_None);
        PyObject *latency = p->has_latency ? PyLong_FromUnsignedLongLong(u64_at(rec, d->off_latency))
                                           : Py_NewRef(Py_None);
        PyObject *pid = cached_u32(&d->pid_cache, u32_at(rec, d->off_pid));
        PyObject *tid = cached_u32(&d->tid_cache, u32_at(rec, d->off_tid));
        PyObject *ts = PyLong_FromUnsignedLongLong(u64_at(rec, d->off_ts));
        PyObject *cpu = PyLong_FromUnsignedLong(u32_at(rec, d->off_cpu));
        if (retval && latency && pid && tid && ts && cpu)
            event = ((PyTypeObject *)d->event_type)->tp_alloc((PyTypeObject *)d->event_type, 0);
        if (event) {
            /* The slots are filled directly, in the order of FIELDS (Event's own __init__ only assigns
             * them).  Everything in an Event is an int, a str, None or a tuple of those, which can
             * hold no reference cycle: the collector is told not to scan the event or its args, so a
             * million kept events cost it nothing. */
            PyObject *values[N_FIELDS] = {p->label, pid, tid, ts, cpu, comm, args, retval, latency, frames, truncated};
            for (int f = 0; f < N_FIELDS; f++) {
                Py_INCREF(values[f]);
                *(PyObject **)((char *)event + d->field_offset[f]) = values[f];
            }
            PyObject_GC_UnTrack(args);
            PyObject_GC_UnTrack(event);
        }
        Py_XDECREF(retval); Py_XDECREF(latency); Py_XDECREF(pid); Py_XDECREF(tid); Py_XDECREF(ts);
        Py_XDECREF(cpu);
    }
done:
    Py_XDECREF(cut_list);
    Py_XDECREF(args);
    Py_XDECREF(truncated);
    Py_XDECREF(comm);
    Py_XDECREF(frames);
    return event;
}

/* ------------------------------------------------------------------ JSON */
static int put_text_bytes(Decoder *d, const char *s, size_t n, int cut)
{
    if (!cut && is_ascii(s, n))
        return put_json_text(d, s, n);
    PyObject *str = text_of(s, n);
    if (!str)
        return -1;
    if (cut) {
        Py_SETREF(str, PyUnicode_Concat(str, cut_mark));
        if (!str)
            return -1;
    }
    int rc = put_json_str(d, str);
    Py_DECREF(str);
    return rc;
}

static int json_line(Decoder *d, const char *rec)
{
    Probe *p = probe_of(d, rec);
    if (!p)
        return -1;
    uint32_t errs = u32_at(rec, d->off_errs);
    const char *comm = rec + d->off_comm;
    char *label;
    Py_ssize_t label_len;
    PyBytes_AsStringAndSize(p->label_json, &label, &label_len);
    if (PUTS(d, "{\"probe\": ") < 0 || put(d, label, (size_t)label_len) < 0 ||
        PUTS(d, ", \"pid\": ") < 0 || put_u64(d, u32_at(rec, d->off_pid)) < 0 ||
        PUTS(d, ", \"tid\": ") < 0 || put_u64(d, u32_at(rec, d->off_tid)) < 0 ||
        PUTS(d, ", \"timestamp_ns\": ") < 0 || put_u64(d, u64_at(rec, d->off_ts)) < 0 ||
        PUTS(d, ", \"cpu\": ") < 0 || put_u64(d, u32_at(rec, d->off_cpu)) < 0 ||
        PUTS(d, ", \"comm\": ") < 0 || put_text_bytes(d, comm, c_len(comm, (size_t)d->comm_len), 0) < 0 ||
        PUTS(d, ", \"args\": [") < 0)
        return -1;
    int cuts[MAX_ARGS], ncut = 0;
    for (int i = 0; i < p->arg_count; i++) {
        if (i && PUTS(d, ", ") < 0)
            return -1;
        int slot = slot_for(p, i), rc;
        if (slot >= 0) {
            int cut;
            size_t n = slot_text(d, rec, slot, &cut);
            if (cut)
                cuts[ncut++] = i;
            rc = (errs & (1U << i)) ? PUTS(d, "null") : put_text_bytes(d, rec + d->str_off[slot], n, cut);
        } else if (errs & (1U << i)) {
            rc = PUTS(d, "null");
        } else if (p->signed_mask & (1U << i)) {
            rc = put_i64(d, (int64_t)u64_at(rec, d->off_args + 8 * i));
        } else {
            rc = put_u64(d, u64_at(rec, d->off_args + 8 * i));
        }
        if (rc < 0)
            return -1;
    }
    if (PUTS(d, "]") < 0)
        return -1;
    if (p->is_return && (PUTS(d, ", \"retval\": ") < 0 || put_u64(d, u64_at(rec, d->off_retval)) < 0))
        return -1;
    if (p->has_latency && (PUTS(d, ", \"latency_ns\": ") < 0 || put_u64(d, u64_at(rec, d->off_latency)) < 0))
        return -1;
    if (d->stack_of != Py_None) {
        PyObject *frames = frames_of(d, rec);
        if (!frames)
            return -1;
        if (frames != Py_None) {
            PyObject *seq = PySequence_Fast(frames, "stack frames must be a sequence");
            int rc = seq ? PUTS(d, ", \"stack\": [") : -1;
            for (Py_ssize_t k = 0; rc == 0 && k < PySequence_Fast_GET_SIZE(seq); k++) {
                PyObject *frame = PySequence_Fast_GET_ITEM(seq, k);
                rc = (k ? PUTS(d, ", ") : 0);
                if (rc == 0)
                    rc = PyUnicode_Check(frame) ? put_json_str(d, frame)
                                                : (PyErr_SetString(PyExc_TypeError, "a frame is not a str"), -1);
            }
            if (rc == 0)
                rc = PUTS(d, "]");
            Py_XDECREF(seq);
            if (rc < 0) {
                Py_DECREF(frames);
                return -1;
            }
        }
        Py_DECREF(frames);
    }
    if (ncut) {
        if (PUTS(d, ", \"truncated\": [") < 0)
            return -1;
        for (int k = 0; k < ncut; k++) {
            if ((k && PUTS(d, ", ") < 0) || PUTS(d, "\"arg") < 0 || put_u64(d, (uint64_t)cuts[k]) < 0 ||
                PUTS(d, "\"") < 0)
                return -1;
        }
        if (PUTS(d, "]") < 0)
            return -1;
    }
    return PUTS(d, "}\n");
}

static int flush_to(Decoder *d, int fd)
{
    size_t done = 0;
    while (done < d->out_len) {
        ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = write(fd, d->out + done, d->out_len - done);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    goto failed;
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            goto failed;
        }
        done += (size_t)n;
    }
    d->out_len = 0;
    return 0;
failed:
    memmove(d->out, d->out + done, d->out_len - done);  /* what was not written stays for the next try */
    d->out_len -= done;
    return -1;
}

/* ------------------------------------------------------------------ the ring buffer */
typedef struct {
    Py_buffer cons, prod;
    uint64_t mask;
} Ring;

static int ring_open(Ring *r, PyObject *consumer, PyObject *producer, unsigned long long mask)
{
    if (PyObject_GetBuffer(consumer, &r->cons, PyBUF_WRITABLE) < 0)
        return -1;
    if (PyObject_GetBuffer(producer, &r->prod, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&r->cons);
        return -1;
    }
    long page = sysconf(_SC_PAGESIZE);
    if (r->cons.len < 8 || r->prod.len < (Py_ssize_t)(page + 2 * (mask + 1)) || (mask & (mask + 1))) {
        PyBuffer_Release(&r->cons);
        PyBuffer_Release(&r->prod);
        PyErr_SetString(PyExc_ValueError, "not the two mappings of a ring buffer of this size");
        return -1;
    }
    r->mask = mask;
    return 0;
}

static void ring_close(Ring *r)
{
    PyBuffer_Release(&r->cons);
    PyBuffer_Release(&r->prod);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef int (*record_fn)(Decoder *d, const char *rec, Py_ssize_t len, void *ctx);  /* 1: stop, -1: error */

/* Hand each committed record to `fn` until the ring is empty, a BUSY record, `fn` stops or fails, or
 * the budget is spent.  Returns records handed over, or -1 (the failing record is consumed).
 *
 * The consumer position is published every PUBLISH_EVERY records and on return, not after each: the
 * producer reads it on every reserve, and a line written per record by the reader's CPU would move
 * back and forth between the two CPUs for each record, slowing the traced program. */
#define PUBLISH_EVERY 64
static long long ring_drain(Decoder *d, Ring *r, double budget, record_fn fn, void *ctx, int *stopped)
{
    uint64_t *consumer_pos = (uint64_t *)r->cons.buf;
    const uint64_t *producer_pos = (const uint64_t *)r->prod.buf;
    const char *data = (const char *)r->prod.buf + sysconf(_SC_PAGESIZE);
    double deadline = now() + budget;
    long long n = 0;
    unsigned unpublished = 0;
    uint64_t cons = __atomic_load_n(consumer_pos, __ATOMIC_ACQUIRE);
    int rc = 0;
    *stopped = 0;
    for (;;) {
        uint64_t prod = __atomic_load_n(producer_pos, __ATOMIC_ACQUIRE);
        if (cons >= prod)
            goto out;
        while (cons < prod) {
            const char *at = data + (cons & r->mask);
            uint32_t header = __atomic_load_n((const uint32_t *)at, __ATOMIC_ACQUIRE);
            if (header & RB_BUSY)
                goto out;
            uint32_t len = header & ~(RB_BUSY | RB_DISCARD);
            cons += ((uint64_t)len + RB_HEADER + 7) & ~(uint64_t)7;
            if (++unpublished == PUBLISH_EVERY) {
                __atomic_store_n(consumer_pos, cons, __ATOMIC_RELEASE);
                unpublished = 0;
            }
            if (header & RB_DISCARD)
                continue;
            if (len < d->size) {
                PyErr_Format(PyExc_ValueError, "a %u-byte record, expected %zd", len, d->size);
                rc = -1;
            } else {
                rc = fn(d, at + RB_HEADER, (Py_ssize_t)len, ctx);
            }
            if (rc < 0)
                goto out;
            n++;
            d->delivered++;
            if (rc > 0 || (n % CLOCK_EVERY == 0 && now() >= deadline)) {
                *stopped = 1;
                goto out;
            }
        }
    }
out:
    __atomic_store_n(consumer_pos, cons, __ATOMIC_RELEASE);
    return rc < 0 ? -1 : n;
}

static int ready(Decoder *d)
{
    if (d->event_type && d->stack_of && d->probes)
        return 1;
    PyErr_SetString(PyExc_ValueError, "the Decoder is not initialised");
    return 0;
}

typedef struct {
    int fd;
    long long limit, written;
} JsonCtx;

static int json_record(Decoder *d, const char *rec, Py_ssize_t len, void *ctx)
{
    (void)len;
    JsonCtx *j = ctx;
    if (json_line(d, rec) < 0)
        return -1;
    j->written++;
    if (d->out_len >= FLUSH_AT && flush_to(d, j->fd) < 0)
        return -1;
    return j->limit >= 0 && j->written >= j->limit;
}

typedef struct {
    PyObject *append, *on_event, *session, *stop_name;
} EventCtx;

static int event_record(Decoder *d, const char *rec, Py_ssize_t len, void *ctx)
{
    (void)len;
    EventCtx *e = ctx;
    PyObject *event = build_event(d, rec);
    if (!event)
        return -1;
    PyObject *r;
    if (e->append != Py_None) {
        if (!(r = PyObject_CallOneArg(e->append, event)))
            goto failed;
        Py_DECREF(r);
    }
    if (e->on_event != Py_None) {
        if (!(r = PyObject_CallOneArg(e->on_event, event)))
            goto failed;
        Py_DECREF(r);
        PyObject *stop = PyObject_GetAttr(e->session, e->stop_name);
        if (!stop)
            goto failed;
        int truth = PyObject_IsTrue(stop);
        Py_DECREF(stop);
        Py_DECREF(event);
        return truth;
    }
    Py_DECREF(event);
    return 0;
failed:
    Py_DECREF(event);
    return -1;
}

static PyObject *Decoder_drain_json(Decoder *d, PyObject *args)
{
    PyObject *consumer, *producer;
    unsigned long long mask;
    double budget;
    JsonCtx j = {0, -1, 0};
    if (!PyArg_ParseTuple(args, "OOKdiL", &consumer, &producer, &mask, &budget, &j.fd, &j.limit) || !ready(d))
        return NULL;
    Ring r;
    if (ring_open(&r, consumer, producer, mask) < 0)
        return NULL;
    int stopped;
    long long n = j.limit == 0 ? 0 : ring_drain(d, &r, budget, json_record, &j, &stopped);
    ring_close(&r);
    if (n < 0 || (d->out_len && flush_to(d, j.fd) < 0))
        return NULL;
    return Py_BuildValue("LO", n, (stopped || j.limit == 0) ? Py_True : Py_False);
}

static PyObject *Decoder_drain_events(Decoder *d, PyObject *args)
{
    PyObject *consumer, *producer;
    unsigned long long mask;
    double budget;
    EventCtx e;
    if (!PyArg_ParseTuple(args, "OOKdOOO", &consumer, &producer, &mask, &budget, &e.append, &e.on_event, &e.session) ||
        !ready(d))
        return NULL;
    if (!(e.stop_name = PyUnicode_InternFromString("_stop")))
        return NULL;
    Ring r;
    if (ring_open(&r, consumer, producer, mask) < 0) {
        Py_DECREF(e.stop_name);
        return NULL;
    }
    int stopped;
    long long n = ring_drain(d, &r, budget, event_record, &e, &stopped);
    ring_close(&r);
    Py_DECREF(e.stop_name);
    if (n < 0)
        return NULL;
    return Py_BuildValue("LO", n, stopped ? Py_True : Py_False);
}

static int record_arg(Decoder *d, PyObject *data, Py_buffer *view)
{
    if (!ready(d))
        return -1;
    if (PyObject_GetBuffer(data, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len < d->size) {
        PyErr_Format(PyExc_ValueError, "a %zd-byte record, expected %zd", view->len, d->size);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *Decoder_event(Decoder *d, PyObject *data)
{
    Py_buffer view;
    if (record_arg(d, data, &view) < 0)
        return NULL;
    PyObject *event = build_event(d, view.buf);
    PyBuffer_Release(&view);
    return event;
}

static PyObject *Decoder_json(Decoder *d, PyObject *data)
{
    Py_buffer view;
    if (record_arg(d, data, &view) < 0)
        return NULL;
    size_t start = d->out_len;
    int rc = json_line(d, view.buf);
    PyBuffer_Release(&view);
    PyObject *out = rc < 0 ? NULL : PyBytes_FromStringAndSize(d->out + start, (Py_ssize_t)(d->out_len - start));
    d->out_len = start;
    return out;
}

/* ------------------------------------------------------------------ construction */
static int get_ssize(PyObject *spec, const char *key, Py_ssize_t *out)
{
    PyObject *v = PyDict_GetItemString(spec, key);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "decoder spec lacks %s", key);
        return -1;
    }
    *out = PyLong_AsSsize_t(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int parse_probe(Probe *p, PyObject *t)
{
    PyObject *slots;
    unsigned long mask;
    if (!PyArg_ParseTuple(t, "UOikOpp", &p->label, &p->label_json, &p->arg_count, &mask, &slots, &p->is_return,
                          &p->has_latency))
        return -1;
    if (!PyBytes_Check(p->label_json) || p->arg_count < 0 || p->arg_count > MAX_ARGS) {
        PyErr_SetString(PyExc_ValueError, "bad probe in decoder spec");
        return -1;
    }
    p->signed_mask = (uint32_t)mask;
    PyObject *seq = PySequence_Fast(slots, "slots must be a sequence");
    if (!seq)
        return -1;
    p->nslots = (int)PySequence_Fast_GET_SIZE(seq);
    if (p->nslots > MAX_SLOTS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many string slots");
        return -1;
    }
    for (int k = 0; k < p->nslots; k++) {
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "ii", &p->slot[k], &p->slot_arg[k])) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    Py_INCREF(p->label);
    Py_INCREF(p->label_json);
    return 0;
}

/* Where each field of the event type lives: it must be a class with exactly these __slots__ (object
 * members), the plain slotted dataclass Event is. */
static int set_field_offsets(Decoder *d)
{
    PyTypeObject *type = (PyTypeObject *)d->event_type;
    if (!PyType_Check(d->event_type) || type->tp_itemsize != 0 || !PyType_IS_GC(type)) {
        PyErr_SetString(PyExc_TypeError, "event_type must be a slotted class");
        return -1;
    }
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *descr = PyDict_GetItemString(type->tp_dict, FIELDS[f]);
        if (!descr || Py_TYPE(descr) != &PyMemberDescr_Type) {
            PyErr_Format(PyExc_TypeError, "event_type has no slot %s", FIELDS[f]);
            return -1;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "event_type's %s is not an object slot", FIELDS[f]);
            return -1;
        }
        d->field_offset[f] = member->offset;
    }
    PyObject *slots = PyDict_GetItemString(type->tp_dict, "__slots__");
    Py_ssize_t count = slots ? PyObject_Length(slots) : -1;
    if (count != N_FIELDS) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "event_type must have exactly the slots of Event");
        return -1;
    }
    return 0;
}

static int Decoder_init(Decoder *d, PyObject *args, PyObject *kwds)
{
    PyObject *spec;
    (void)kwds;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &spec))
        return -1;
    if (d->probes) {
        PyErr_SetString(PyExc_RuntimeError, "a Decoder is initialised once");
        return -1;
    }
    static const char *keys[] = {"size", "ts", "latency", "retval", "pid", "tid", "probe", "cpu", "errs", "stack",
                                 "args", "comm", "comm_len", "str_len", "limit"};
    Py_ssize_t *slots[] = {&d->size, &d->off_ts, &d->off_latency, &d->off_retval, &d->off_pid, &d->off_tid,
                           &d->off_probe, &d->off_cpu, &d->off_errs, &d->off_stack, &d->off_args, &d->off_comm,
                           &d->comm_len, &d->str_len, &d->limit};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (get_ssize(spec, keys[i], slots[i]) < 0)
            return -1;
    if (d->comm_len <= 0 || d->comm_len > (Py_ssize_t)sizeof(d->last_comm)) {
        PyErr_SetString(PyExc_ValueError, "bad comm length");
        return -1;
    }
    PyObject *strs = PyDict_GetItemString(spec, "strings"), *probes = PyDict_GetItemString(spec, "probes");
    d->event_type = PyDict_GetItemString(spec, "event_type");
    d->stack_of = PyDict_GetItemString(spec, "stack_of");
    if (!strs || !probes || !d->event_type || !d->stack_of || !PyTuple_Check(strs) || !PyTuple_Check(probes)) {
        d->event_type = d->stack_of = NULL;
        PyErr_SetString(PyExc_ValueError, "decoder spec lacks strings, probes, event_type or stack_of");
        return -1;
    }
    Py_INCREF(d->event_type);
    Py_INCREF(d->stack_of);
    if (set_field_offsets(d) < 0)
        return -1;
    d->nstr = PyTuple_GET_SIZE(strs);
    if (d->nstr > MAX_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "too many string slots");
        return -1;
    }
    for (Py_ssize_t k = 0; k < d->nstr; k++) {
        d->str_off[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(strs, k));
        if (d->str_off[k] < 0 || d->str_off[k] + d->str_len > d->size) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "string slot outside the record");
            return -1;
        }
    }
    d->nprobes = PyTuple_GET_SIZE(probes);
    d->probes = PyMem_Calloc((size_t)d->nprobes + 1, sizeof(Probe));
    if (!d->probes) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < d->nprobes; i++) {
        Probe *p = &d->probes[i];
        if (parse_probe(p, PyTuple_GET_ITEM(probes, i)) < 0) {
            p->label = p->label_json = NULL;
            d->nprobes = i;
            return -1;
        }
        for (int k = 0; k < p->nslots; k++)
            if (p->slot[k] < 0 || p->slot[k] >= d->nstr || p->slot_arg[k] < 0 || p->slot_arg[k] >= p->arg_count) {
                d->nprobes = i + 1;
                PyErr_SetString(PyExc_ValueError, "string slot out of range");
                return -1;
            }
    }
    for (Py_ssize_t i = 0; i < d->nprobes; i++)
        if (d->off_args + 8 * d->probes[i].arg_count > d->size) {
            PyErr_SetString(PyExc_ValueError, "arguments outside the record");
            return -1;
        }
    if (d->off_comm + d->comm_len > d->size) {
        PyErr_SetString(PyExc_ValueError, "member outside the record");
        return -1;
    }
    return 0;
}

/* stack_of is usually a bound method of the session that owns this decoder: a cycle to collect. */
static int Decoder_traverse(Decoder *d, visitproc visit, void *arg)
{
    Py_VISIT(d->event_type);
    Py_VISIT(d->stack_of);
    return 0;
}

static int Decoder_clear(Decoder *d)
{
    Py_CLEAR(d->event_type);
    Py_CLEAR(d->stack_of);
    return 0;
}

static void Decoder_dealloc(Decoder *d)
{
    PyObject_GC_UnTrack(d);
    Decoder_clear(d);
    for (Py_ssize_t i = 0; i < d->nprobes; i++) {
        Py_XDECREF(d->probes[i].label);
        Py_XDECREF(d->probes[i].label_json);
    }
    PyMem_Free(d->probes);
    PyMem_Free(d->out);
    Py_XDECREF(d->comm_str);
    Py_XDECREF(d->pid_cache.obj);
    Py_XDECREF(d->tid_cache.obj);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyObject *Decoder_get_delivered(Decoder *d, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(d->delivered);
}

static PyMethodDef Decoder_methods[] = {
    {"event", (PyCFunction)Decoder_event, METH_O, "event(record) -> Event"},
    {"json", (PyCFunction)Decoder_json, METH_O, "json(record) -> bytes: one JSON line"},
    {"drain_json", (PyCFunction)Decoder_drain_json, METH_VARARGS,
     "drain_json(consumer, producer, mask, budget_s, fd, limit) -> (delivered, stopped)"},
    {"drain_events", (PyCFunction)Decoder_drain_events, METH_VARARGS,
     "drain_events(consumer, producer, mask, budget_s, append, on_event, session) -> (delivered, stopped)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Decoder_getset[] = {
    {"delivered", (getter)Decoder_get_delivered, NULL, "records handed over by the drains", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "usdtkit._native._fastevents.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Decoder_traverse,
    .tp_clear = (inquiry)Decoder_clear,
    .tp_doc = "Decoder(spec): decode event records of one layout (see the module docstring)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
    .tp_getset = Decoder_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastevents", "Ring buffer records decoded in C (see usdtkit.collect.native).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastevents(void)
{
    if (PyType_Ready(&DecoderType) < 0)
        return NULL;
    if (!cut_mark && !(cut_mark = PyUnicode_FromString("\xe2\x80\xa6")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddType(m, &DecoderType) < 0 || PyModule_AddIntConstant(m, "MAX_ARGS", MAX_ARGS) < 0 ||
              PyModule_AddIntConstant(m, "MAX_SLOTS", MAX_SLOTS) < 0))
        Py_CLEAR(m);
    return m;
}
