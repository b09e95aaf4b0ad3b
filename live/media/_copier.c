/* The per-packet, per-viewer path of the forwarder, in C: live/media/forwarding.py keeps the decisions
 * (when a viewer starts, on which keyframe, how its numbering continues), this file the copies.
 *
 * A Copier is one viewer's outgoing stream of one track. send_burst() takes the packets that arrived
 * together (usually one) and, for every copier, makes its copy of each: the viewer's header from its
 * template (its SSRC and mid extension) with the packet's marker, payload type, sequence number and
 * timestamp moved by the copier's offsets, then the payload, then SRTP protection with the viewer's
 * libsrtp session (srtp_protect is called through the function pointer pylibsrtp's binding exposes, so
 * nothing links against libsrtp here). Then it sends them: a run of equal-sized copies to one viewer is
 * one sendmsg() with UDP_SEGMENT (UDP GSO), which the kernel splits into datagrams, and a lone copy is
 * one send(). The last copies are kept (video) to answer the viewer's NACKs.
 *
 * With many copiers, a burst's pass is split over threads (set_threads()): the calling thread keeps the
 * GIL, and the helpers touch no Python object, only the copiers' C state.
 *
 * Done in Python, each copy costs a dozen interpreter calls (struct packing, cffi buffers, the send
 * wrapper): most of what a copy costs after the kernel's send and the cipher.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <netinet/in.h>
#ifdef __linux__
#include <netinet/udp.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#endif

typedef int (*srtp_protect_fn)(void *ctx, void *packet, int *length);

#define PACKET_BUFFER 2048
#define SRTP_TRAILER_ROOM 144 /* pylibsrtp.SRTP_MAX_TRAILER_LEN */
#define RTP_HEADER 12
#define MAX_SEGMENTS 64             /* the kernel's UDP_MAX_SEGMENTS */
#define MAX_SEGMENTED_BYTES 60000   /* under the 64 KiB of one UDP datagram with its headers */
#define PENDING_MAX MAX_SEGMENTS
#define MAX_THREADS 64
/* Below this many copies (copiers times packets) a pass runs in the calling thread: waking helpers costs
 * more than it saves. */
#define PARALLEL_MIN 48

/* One protected copy: held by a copier's pending list and its history, each holding one reference. Only
 * the thread running a pass over its copier touches it, so the count needs no atomics. */
typedef struct {
    unsigned int refs;
    unsigned int length;
    unsigned char data[];
} Copy;

static void copy_release(Copy *copy) {
    if (copy != NULL && --copy->refs == 0)
        free(copy);
}

typedef struct {
    PyObject_HEAD
    PyObject *template; /* bytes: the RTP header (12 bytes) and the extension block */
    PyObject *owner;    /* keeps the libsrtp session alive */
    PyObject *sock;     /* the viewer's connected socket: its fileno() before each send, -1 once closed */
    void *protect;
    void *session;
    const unsigned char *header; /* the template's bytes */
    Py_ssize_t header_length;
    unsigned int payload_type;
    unsigned int seq_offset;
    unsigned int ts_offset;
    unsigned int last_seq;
    unsigned int last_ts;
    unsigned long long packets;
    unsigned long long octets;
    unsigned long long dropped;
    int segmenting;
    int in_pass; /* set while a pass holds it: a copier listed twice would be worked on by two threads */
    int fd;      /* looked up (with the GIL) before each send pass */
    Py_ssize_t history_size;
    Copy **history; /* history_size slots, by sequence number; NULL when empty */
    Py_ssize_t pending_count;
    Copy *pending[PENDING_MAX];
} Copier;

static PyTypeObject CopierType;

static void release_pending(Copier *self) {
    for (Py_ssize_t i = 0; i < self->pending_count; i++)
        copy_release(self->pending[i]);
    self->pending_count = 0;
}

/* The viewer's socket descriptor into self->fd, or -1 (no Python error left set) when it is closed. */
static void look_up_fd(Copier *self) {
    if (self->sock == NULL) { /* cleared by the garbage collector */
        self->fd = -1;
        return;
    }
    int fd = PyObject_AsFileDescriptor(self->sock);
    if (fd < 0)
        PyErr_Clear();
    self->fd = fd;
}

static int refused_segmenting(int error) {
    /* EMSGSIZE: a segment larger than the route's MTU (newer kernels; older ones say EINVAL). The route of
     * a viewer's connected socket does not change, so neither would the answer. */
    return error == EINVAL || error == EIO || error == ENOPROTOOPT || error == EOPNOTSUPP || error == EMSGSIZE;
}

static void send_one(Copier *self, Copy *copy) {
    if (send(self->fd, copy->data, copy->length, MSG_DONTWAIT) < 0)
        self->dropped++; /* socket buffer full, or the viewer's port closed: lost, as on a network */
}

/* Sends the pending copies to self->fd. No Python API: runs in helper threads. */
static void flush(Copier *self) {
    Py_ssize_t n = self->pending_count;
    if (n == 0)
        return;
    if (self->fd < 0) {
        self->dropped += (unsigned long long)n;
        release_pending(self);
        return;
    }
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned int size = self->pending[i]->length;
        Py_ssize_t j = i + 1;
#ifdef __linux__
        /* A run: every copy but the last has the first one's size, the last is no larger. */
        unsigned int total = size;
        while (self->segmenting && j < n && j - i < MAX_SEGMENTS) {
            unsigned int next = self->pending[j]->length;
            if (next > size || total + next > MAX_SEGMENTED_BYTES)
                break;
            total += next;
            j++;
            if (next < size)
                break;
        }
        if (j - i > 1) {
            struct iovec iov[MAX_SEGMENTS];
            for (Py_ssize_t k = i; k < j; k++) {
                iov[k - i].iov_base = self->pending[k]->data;
                iov[k - i].iov_len = self->pending[k]->length;
            }
            union {
                char buf[CMSG_SPACE(sizeof(uint16_t))];
                struct cmsghdr align;
            } control;
            memset(&control, 0, sizeof(control));
            struct msghdr msg;
            memset(&msg, 0, sizeof(msg));
            msg.msg_iov = iov;
            msg.msg_iovlen = (size_t)(j - i);
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof(control.buf);
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
            cmsg->cmsg_level = IPPROTO_UDP;
            cmsg->cmsg_type = UDP_SEGMENT;
            cmsg->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t segment = (uint16_t)size;
            memcpy(CMSG_DATA(cmsg), &segment, sizeof(segment));
            if (sendmsg(self->fd, &msg, MSG_DONTWAIT) < 0) {
                /* An old kernel, a route whose MTU is below the segment size, a device without checksum
                 * offload (refused_segmenting): this viewer gets packet by packet from now on. Otherwise (a full socket
                 * buffer) the run's packets are tried one by one: some may still fit. */
                if (refused_segmenting(errno))
                    self->segmenting = 0;
                for (Py_ssize_t k = i; k < j; k++)
                    send_one(self, self->pending[k]);
            }
            i = j;
            continue;
        }
#endif
        send_one(self, self->pending[i]);
        i = j;
    }
    release_pending(self);
}

/* This copier's copy of one packet, into its pending copies (sent first if they are full). No Python
 * API: runs in helper threads. */
static void copy_packet(Copier *self, unsigned int seq, unsigned int ts, int marker, const unsigned char *payload,
                        Py_ssize_t payload_len) {
    Py_ssize_t header_len = self->header_length;
    if (self->session == NULL || header_len + payload_len + SRTP_TRAILER_ROOM > PACKET_BUFFER) {
        self->dropped++;
        return;
    }
    Copy *copy = malloc(sizeof(Copy) + (size_t)(header_len + payload_len + SRTP_TRAILER_ROOM));
    if (copy == NULL) {
        self->dropped++;
        return;
    }
    unsigned int out_seq = (seq + self->seq_offset) & 0xFFFFu;
    unsigned int out_ts = (ts + self->ts_offset) & 0xFFFFFFFFu;
    /* libsrtp reads the header as 32-bit words: malloc's alignment and the 8-byte Copy header keep data
     * aligned. */
    unsigned char *packet = copy->data;
    memcpy(packet, self->header, (size_t)header_len);
    packet[1] = (unsigned char)(self->payload_type | (marker ? 0x80u : 0u));
    packet[2] = (unsigned char)(out_seq >> 8);
    packet[3] = (unsigned char)out_seq;
    packet[4] = (unsigned char)(out_ts >> 24);
    packet[5] = (unsigned char)(out_ts >> 16);
    packet[6] = (unsigned char)(out_ts >> 8);
    packet[7] = (unsigned char)out_ts;
    memcpy(packet + header_len, payload, (size_t)payload_len);
    int length = (int)(header_len + payload_len);
    if (((srtp_protect_fn)self->protect)(self->session, packet, &length) != 0) {
        free(copy);
        self->dropped++;
        return;
    }
    copy->length = (unsigned int)length;
    copy->refs = 1;
    if (self->pending_count == PENDING_MAX)
        flush(self);
    self->pending[self->pending_count++] = copy;
    if (self->history_size > 0) {
        Copy **slot = &self->history[out_seq % self->history_size];
        copy->refs++;
        copy_release(*slot);
        *slot = copy;
    }
    self->last_seq = out_seq;
    self->last_ts = out_ts;
    self->packets++;
    self->octets += (unsigned long long)payload_len;
}

/* ---------------------------------------------------------------------------------------------------
 * Passes over many copiers, split between the calling thread and helper threads (LiveKit spreads a
 * track's down tracks over goroutines the same way). The caller keeps the GIL throughout: helpers touch
 * only C data (the copiers' C fields, the payload's buffer), never a Python object, and nothing else in
 * the process can run Python code against these copiers until the pass is over. */

typedef struct {
    unsigned int seq, ts;
    int marker;
    const unsigned char *payload;
    Py_ssize_t payload_len;
} Packet;

/* Every copier's copies of every packet of a burst, then its sends. */
typedef struct {
    Copier **copiers;
    Py_ssize_t count;
    const Packet *packets;
    Py_ssize_t packet_count;
} Pass;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_cond_t done;
    int wanted;  /* threads per pass, the calling one included */
    int running; /* helper threads started (in process `pid`) */
    pid_t pid;
    pthread_t helpers[MAX_THREADS];
    unsigned long generation;
    unsigned long created_generation; /* the generation when the helpers started: they wait for the next */
    int remaining;
    int stopping;
    const Pass *pass;
    int parts;
    unsigned long long split_passes; /* passes that used the helpers */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 1, 0, 0, {0}, 0, 0, 0, 0, NULL, 1, 0};

static void run_part(const Pass *pass, int part, int parts) {
    Py_ssize_t begin = pass->count * part / parts, end = pass->count * (part + 1) / parts;
    for (Py_ssize_t i = begin; i < end; i++) {
        Copier *copier = pass->copiers[i];
        for (Py_ssize_t k = 0; k < pass->packet_count; k++) {
            const Packet *packet = &pass->packets[k];
            copy_packet(copier, packet->seq, packet->ts, packet->marker, packet->payload, packet->payload_len);
        }
        flush(copier);
    }
}

static void *helper_main(void *arg) {
    int part = (int)(intptr_t)arg;
    unsigned long seen = 0;
    pthread_mutex_lock(&pool.lock);
    seen = pool.created_generation;
    for (;;) {
        while (pool.generation == seen && !pool.stopping)
            pthread_cond_wait(&pool.wake, &pool.lock);
        if (pool.stopping)
            break;
        seen = pool.generation;
        const Pass *pass = pool.pass;
        int parts = pool.parts;
        pthread_mutex_unlock(&pool.lock);
        if (part < parts)
            run_part(pass, part, parts);
        pthread_mutex_lock(&pool.lock);
        if (--pool.remaining == 0)
            pthread_cond_signal(&pool.done);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

static void stop_helpers(void) {
    if (pool.running == 0)
        return;
    pthread_mutex_lock(&pool.lock);
    pool.stopping = 1;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < pool.running; i++)
        pthread_join(pool.helpers[i], NULL);
    pool.running = 0;
    pool.stopping = 0;
}

/* Helpers for `wanted` threads in this process, or as many as the system gives. */
static void ensure_helpers(void) {
    pid_t pid = getpid();
    if (pool.running > 0 && pool.pid != pid) {
        /* A forked child: the parent's helpers do not exist here. The pool's lock was free at the fork,
         * since a pass holds the GIL from start to end. */
        pool.running = 0;
        pthread_mutex_init(&pool.lock, NULL);
        pthread_cond_init(&pool.wake, NULL);
        pthread_cond_init(&pool.done, NULL);
    }
    if (pool.running == pool.wanted - 1)
        return;
    stop_helpers();
    pool.pid = pid;
    pool.created_generation = pool.generation;
    /* Helpers start with every signal blocked: signals stay with the interpreter's threads. */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    int failed = 0;
    for (int i = 0; i < pool.wanted - 1 && !failed; i++) {
        /* Helper part numbers start at 1: part 0 is the calling thread's. */
        if (pthread_create(&pool.helpers[i], NULL, helper_main, (void *)(intptr_t)(i + 1)) != 0)
            failed = 1;
        else
            pool.running++;
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (failed)
        pool.wanted = pool.running + 1; /* the threads the system gave: not asked again at every pass */
}

static void run_pass(const Pass *pass) {
    int split = pass->count >= 2 && pass->count * pass->packet_count >= PARALLEL_MIN && pool.wanted > 1;
    if (split)
        ensure_helpers();
    if (!split || pool.running == 0) {
        run_part(pass, 0, 1);
        return;
    }
    int parts = pool.running + 1 < pass->count ? pool.running + 1 : (int)pass->count;
    pool.split_passes++;
    pthread_mutex_lock(&pool.lock);
    pool.pass = pass;
    pool.parts = parts;
    pool.remaining = pool.running;
    pool.generation++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_part(pass, 0, parts);
    pthread_mutex_lock(&pool.lock);
    while (pool.remaining > 0)
        pthread_cond_wait(&pool.done, &pool.lock);
    pool.pass = NULL;
    pthread_mutex_unlock(&pool.lock);
}

/* Copier(template, protect, session, owner, sock, payload_type, history, segmenting) */
static int Copier_init(Copier *self, PyObject *args, PyObject *kwds) {
    PyObject *template, *protect, *session, *owner, *sock;
    int payload_type;
    Py_ssize_t history;
    int segmenting;
    static char *keywords[] = {"template", "protect", "session", "owner", "sock",
                               "payload_type", "history", "segmenting", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "SOOOOinp", keywords, &template, &protect, &session, &owner,
                                     &sock, &payload_type, &history, &segmenting))
        return -1;
    if (PyBytes_GET_SIZE(template) < RTP_HEADER) {
        PyErr_SetString(PyExc_ValueError, "template is shorter than an RTP header");
        return -1;
    }
    if (payload_type < 0 || payload_type > 127 || history < 0 || history > 65536) {
        PyErr_SetString(PyExc_ValueError, "payload_type or history out of range");
        return -1;
    }
    void *protect_ptr = PyLong_AsVoidPtr(protect);
    void *session_ptr = PyLong_AsVoidPtr(session);
    if (PyErr_Occurred())
        return -1;
    if (protect_ptr == NULL || session_ptr == NULL) {
        PyErr_SetString(PyExc_ValueError, "protect and session must be addresses");
        return -1;
    }
    if (self->template != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Copier is initialised once");
        return -1;
    }
    if (history > 0) {
        self->history = PyMem_Calloc((size_t)history, sizeof(Copy *));
        if (self->history == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    self->history_size = history;
    self->template = Py_NewRef(template);
    self->header = (const unsigned char *)PyBytes_AS_STRING(template);
    self->header_length = PyBytes_GET_SIZE(template);
    self->fd = -1;
    self->owner = Py_NewRef(owner);
    self->sock = Py_NewRef(sock);
    self->protect = protect_ptr;
    self->session = session_ptr;
    self->payload_type = (unsigned int)payload_type;
#ifdef __linux__
    self->segmenting = segmenting;
#else
    self->segmenting = 0;
#endif
    return 0;
}

static int Copier_traverse(Copier *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    Py_VISIT(self->sock);
    return 0;
}

/* Breaks a reference cycle: the copier then copies nothing (its libsrtp session may be gone). */
static int Copier_clear(Copier *self) {
    self->session = NULL;
    Py_CLEAR(self->owner);
    Py_CLEAR(self->sock);
    return 0;
}

static void Copier_dealloc(Copier *self) {
    PyObject_GC_UnTrack(self);
    release_pending(self);
    if (self->history != NULL) {
        for (Py_ssize_t i = 0; i < self->history_size; i++)
            copy_release(self->history[i]);
        PyMem_Free(self->history);
    }
    Py_XDECREF(self->template);
    Copier_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(Copier_retransmit_doc, "retransmit(seqs) -> int\n\n"
                                    "Send again the copies with these sequence numbers that history still "
                                    "holds; returns how many were sent.");

static PyObject *Copier_retransmit(Copier *self, PyObject *seqs) {
    PyObject *items = PySequence_Fast(seqs, "retransmit takes a list of sequence numbers");
    if (items == NULL)
        return NULL;
    long sent = 0;
    if (self->history_size > 0)
        look_up_fd(self);
    int fd = self->history_size > 0 ? self->fd : -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n && fd >= 0; i++) {
        unsigned long seq = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(items, i));
        if (PyErr_Occurred() || seq > 0xFFFF) {
            PyErr_Clear();
            continue; /* not a sequence number: nothing to send for it */
        }
        Copy *copy = self->history[seq % (unsigned long)self->history_size];
        /* An SRTP packet's header is in clear: its bytes 2-3 are the sequence number. */
        if (copy == NULL || ((unsigned long)copy->data[2] << 8 | copy->data[3]) != seq)
            continue;
        if (send(fd, copy->data, copy->length, MSG_DONTWAIT) < 0)
            self->dropped++;
        else
            sent++;
    }
    Py_DECREF(items);
    return PyLong_FromLong(sent);
}

static PyMethodDef Copier_methods[] = {
    {"retransmit", (PyCFunction)Copier_retransmit, METH_O, Copier_retransmit_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Copier_members[] = {
    {"seq_offset", T_UINT, offsetof(Copier, seq_offset), 0, "added to a source packet's sequence number"},
    {"ts_offset", T_UINT, offsetof(Copier, ts_offset), 0, "added to a source packet's timestamp"},
    {"last_seq", T_UINT, offsetof(Copier, last_seq), 0, "the sequence number of the last copy"},
    {"last_ts", T_UINT, offsetof(Copier, last_ts), 0, "the timestamp of the last copy"},
    {"packets", T_ULONGLONG, offsetof(Copier, packets), READONLY, "copies made"},
    {"octets", T_ULONGLONG, offsetof(Copier, octets), READONLY, "payload octets copied"},
    {"dropped", T_ULONGLONG, offsetof(Copier, dropped), READONLY, "copies lost: refused, too large or unsent"},
    {"segmenting", T_INT, offsetof(Copier, segmenting), READONLY, "whether runs still go out segmented"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CopierType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "live.media._copier.Copier",
    .tp_doc = PyDoc_STR("One viewer's outgoing stream of one track: its copies, counters and history."),
    .tp_basicsize = sizeof(Copier),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Copier_traverse,
    .tp_clear = (inquiry)Copier_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Copier_init,
    .tp_dealloc = (destructor)Copier_dealloc,
    .tp_methods = Copier_methods,
    .tp_members = Copier_members,
};

static int as_uint(PyObject *value, unsigned long limit, unsigned int *out, const char *name) {
    unsigned long v = PyLong_AsUnsignedLong(value);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > limit) {
        PyErr_Format(PyExc_ValueError, "%s out of range", name);
        return -1;
    }
    *out = (unsigned int)v;
    return 0;
}

static void release_copiers(Copier **copiers, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) {
        copiers[i]->in_pass = 0;
        Py_DECREF(copiers[i]);
    }
    PyMem_Free(copiers);
}

/* The initialised copiers of a list, each with a reference held until release_copiers(); NULL with an
 * error set when the list holds anything else, or a copier twice. */
static Copier **copiers_of(PyObject *list, Py_ssize_t *count) {
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "copiers must be a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(list);
    Copier **copiers = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(Copier *));
    if (copiers == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyObject_TypeCheck(item, &CopierType) || ((Copier *)item)->template == NULL ||
            ((Copier *)item)->in_pass) {
            release_copiers(copiers, i);
            PyErr_SetString(PyExc_ValueError, "copiers must hold initialised Copier objects, each once");
            return NULL;
        }
        copiers[i] = (Copier *)Py_NewRef(item);
        copiers[i]->in_pass = 1;
    }
    *count = n;
    return copiers;
}

#define BURST_MAX 64

PyDoc_STRVAR(send_burst_doc, "send_burst(copiers, packets) -> None\n\n"
                             "Every copier's copy of each packet, (seq, timestamp, marker, payload) in order, "
                             "sent: a run of equal-sized copies as one segmented send.");

static PyObject *send_burst(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_burst takes 2 arguments");
        return NULL;
    }
    if (!PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "packets must be a list");
        return NULL;
    }
    if (PyList_GET_SIZE(args[1]) > BURST_MAX) {
        PyErr_Format(PyExc_ValueError, "packets must be a list of at most %d", BURST_MAX);
        return NULL;
    }
    Packet packets[BURST_MAX];
    Py_buffer payloads[BURST_MAX];
    Py_ssize_t held = 0, n = PyList_GET_SIZE(args[1]);
    PyObject *result = NULL;
    for (; held < n; held++) {
        PyObject *item = PyList_GET_ITEM(args[1], held);
        PyObject *seq, *ts, *marker, *payload;
        if (!PyTuple_Check(item) || !PyArg_UnpackTuple(item, "packet", 4, 4, &seq, &ts, &marker, &payload)) {
            PyErr_SetString(PyExc_TypeError, "a packet is a (seq, timestamp, marker, payload) tuple");
            goto done;
        }
        Packet *packet = &packets[held];
        if (as_uint(seq, 0xFFFFUL, &packet->seq, "seq") < 0 || as_uint(ts, 0xFFFFFFFFUL, &packet->ts, "timestamp") < 0)
            goto done;
        /* An int, not any object's truth (__bool__): no Python code may run while this loop reads the list. */
        if (!PyLong_Check(marker)) {
            PyErr_SetString(PyExc_TypeError, "a packet's marker is an int");
            goto done;
        }
        int overflow = 0;
        long flag = PyLong_AsLongAndOverflow(marker, &overflow); /* an int's own value: runs no Python code */
        packet->marker = flag != 0 || overflow != 0;
        if (PyObject_GetBuffer(payload, &payloads[held], PyBUF_SIMPLE) < 0)
            goto done;
        packet->payload = (const unsigned char *)payloads[held].buf;
        packet->payload_len = payloads[held].len;
    }
    Pass pass = {0};
    pass.packets = packets;
    pass.packet_count = n;
    pass.copiers = copiers_of(args[0], &pass.count);
    if (pass.copiers == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < pass.count; i++)
        look_up_fd(pass.copiers[i]);
    if (n > 0)
        run_pass(&pass);
    release_copiers(pass.copiers, pass.count);
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&payloads[i]);
    return result;
}

PyDoc_STRVAR(set_threads_doc, "set_threads(n) -> None\n\n"
                              "Threads per pass over many copiers (the calling one included); 1 runs every "
                              "pass in the calling thread.");

static PyObject *set_threads(PyObject *module, PyObject *arg) {
    (void)module;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1 || n > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be 1-%d", MAX_THREADS);
        return NULL;
    }
    pool.wanted = (int)n;
    if (pool.pid == getpid())
        stop_helpers(); /* the next pass starts as many as now wanted */
    Py_RETURN_NONE;
}

static PyObject *split_passes(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyLong_FromUnsignedLongLong(pool.split_passes);
}

static PyMethodDef module_methods[] = {
    {"send_burst", (PyCFunction)(void (*)(void))send_burst, METH_FASTCALL, send_burst_doc},
    {"set_threads", (PyCFunction)set_threads, METH_O, set_threads_doc},
    {"split_passes", (PyCFunction)split_passes, METH_NOARGS, "Passes split over threads so far."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef copier_module = {
    PyModuleDef_HEAD_INIT, "live.media._copier", "Viewers' copies of forwarded RTP packets.", 0, module_methods,
};

PyMODINIT_FUNC PyInit__copier(void) {
    if (PyType_Ready(&CopierType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&copier_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Copier", (PyObject *)&CopierType) < 0 ||
        PyModule_AddIntConstant(module, "PARALLEL_MIN", PARALLEL_MIN) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
