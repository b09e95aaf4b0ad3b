/* The per-packet, per-viewer path of the forwarder, in C: live/media/forwarding.py keeps the decisions
 * (when a viewer starts, on which keyframe, how its numbering continues), this file the copies.
 *
 * A Copier is one viewer's outgoing stream of one track. fan_out() makes every copier's copy of one
 * packet: the viewer's header from its template (its SSRC and mid extension) with this packet's marker,
 * payload type, sequence number and timestamp moved by the copier's offsets, then the payload, then
 * SRTP protection with the viewer's libsrtp session (srtp_protect is called through the function
 * pointer pylibsrtp's binding exposes, so nothing links against libsrtp here). Copies wait in the
 * copier until flush_all(): a run of equal-sized copies to one viewer is one sendmsg() with UDP_SEGMENT
 * (UDP GSO), which the kernel splits into datagrams, and a lone copy is one send(). The last copies are
 * kept (video) to answer the viewer's NACKs.
 *
 * Done in Python, each copy costs a dozen interpreter calls (struct packing, cffi buffers, the send
 * wrapper): most of what a copy costs after the kernel's send and the cipher.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
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

typedef struct {
    PyObject_HEAD
    PyObject *template; /* bytes: the RTP header (12 bytes) and the extension block */
    PyObject *owner;    /* keeps the libsrtp session alive */
    PyObject *sock;     /* the viewer's connected socket: its fileno() at each send, -1 once closed */
    void *protect;
    void *session;
    unsigned int payload_type;
    unsigned int seq_offset;
    unsigned int ts_offset;
    unsigned int last_seq;
    unsigned int last_ts;
    unsigned long long packets;
    unsigned long long octets;
    unsigned long long dropped;
    int segmenting;
    Py_ssize_t history_size;
    PyObject **history; /* history_size slots, by sequence number; NULL when empty */
    Py_ssize_t pending_count;
    PyObject *pending[PENDING_MAX];
} Copier;

static PyTypeObject CopierType;

static void release_pending(Copier *self) {
    for (Py_ssize_t i = 0; i < self->pending_count; i++)
        Py_DECREF(self->pending[i]);
    self->pending_count = 0;
}

/* The viewer's socket descriptor, or -1 (no Python error left set) when it is closed. */
static int viewer_fd(Copier *self) {
    int fd = PyObject_AsFileDescriptor(self->sock);
    if (fd < 0) {
        PyErr_Clear();
        return -1;
    }
    return fd;
}

static int refused_segmenting(int error) {
    return error == EINVAL || error == EIO || error == ENOPROTOOPT || error == EOPNOTSUPP;
}

static void send_one(Copier *self, int fd, PyObject *packet) {
    if (send(fd, PyBytes_AS_STRING(packet), (size_t)PyBytes_GET_SIZE(packet), MSG_DONTWAIT) < 0)
        self->dropped++; /* socket buffer full, or the viewer's port closed: lost, as on a network */
}

static void flush(Copier *self) {
    Py_ssize_t n = self->pending_count;
    if (n == 0 || self->sock == NULL)
        return;
    int fd = viewer_fd(self);
    if (fd < 0) {
        self->dropped += (unsigned long long)n;
        release_pending(self);
        return;
    }
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t size = PyBytes_GET_SIZE(self->pending[i]);
        Py_ssize_t j = i + 1;
#ifdef __linux__
        /* A run: every copy but the last has the first one's size, the last is no larger. */
        Py_ssize_t total = size;
        while (self->segmenting && j < n && j - i < MAX_SEGMENTS) {
            Py_ssize_t next = PyBytes_GET_SIZE(self->pending[j]);
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
                iov[k - i].iov_base = PyBytes_AS_STRING(self->pending[k]);
                iov[k - i].iov_len = (size_t)PyBytes_GET_SIZE(self->pending[k]);
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
            if (sendmsg(fd, &msg, MSG_DONTWAIT) < 0) {
                if (refused_segmenting(errno)) {
                    /* An old kernel, a route whose MTU is below the segment size, a device without
                     * checksum offload: this viewer gets packet by packet from now on. */
                    self->segmenting = 0;
                    for (Py_ssize_t k = i; k < j; k++)
                        send_one(self, fd, self->pending[k]);
                } else {
                    self->dropped += (unsigned long long)(j - i);
                }
            }
            i = j;
            continue;
        }
#endif
        send_one(self, fd, self->pending[i]);
        i = j;
    }
    release_pending(self);
}

/* One copy of a packet into this copier's pending copies; -1 with a Python error set on failure. */
static int copy_packet(Copier *self, unsigned int seq, unsigned int ts, int marker, const char *payload,
                       Py_ssize_t payload_len) {
    Py_ssize_t template_len = PyBytes_GET_SIZE(self->template);
    if (template_len + payload_len + SRTP_TRAILER_ROOM > PACKET_BUFFER) {
        self->dropped++;
        return 0;
    }
    unsigned int out_seq = (seq + self->seq_offset) & 0xFFFFu;
    unsigned int out_ts = (ts + self->ts_offset) & 0xFFFFFFFFu;
    uint32_t aligned[PACKET_BUFFER / 4]; /* libsrtp reads the header as 32-bit words */
    unsigned char *packet = (unsigned char *)aligned;
    memcpy(packet, PyBytes_AS_STRING(self->template), (size_t)template_len);
    packet[1] = (unsigned char)(self->payload_type | (marker ? 0x80u : 0u));
    packet[2] = (unsigned char)(out_seq >> 8);
    packet[3] = (unsigned char)out_seq;
    packet[4] = (unsigned char)(out_ts >> 24);
    packet[5] = (unsigned char)(out_ts >> 16);
    packet[6] = (unsigned char)(out_ts >> 8);
    packet[7] = (unsigned char)out_ts;
    memcpy(packet + template_len, payload, (size_t)payload_len);
    int length = (int)(template_len + payload_len);
    if (((srtp_protect_fn)self->protect)(self->session, packet, &length) != 0) {
        self->dropped++;
        return 0;
    }
    PyObject *protected = PyBytes_FromStringAndSize((const char *)packet, length);
    if (protected == NULL)
        return -1;
    if (self->pending_count == PENDING_MAX)
        flush(self);
    self->pending[self->pending_count++] = protected;
    if (self->history_size > 0)
        Py_XSETREF(self->history[out_seq % self->history_size], Py_NewRef(protected));
    self->last_seq = out_seq;
    self->last_ts = out_ts;
    self->packets++;
    self->octets += (unsigned long long)payload_len;
    return 0;
}

/* Copier(template, protect, session, owner, sock, payload_type, history, segmenting) */
static int Copier_init(Copier *self, PyObject *args, PyObject *kwds) {
    PyObject *template, *protect, *session, *owner, *sock;
    unsigned int payload_type;
    Py_ssize_t history;
    int segmenting;
    static char *keywords[] = {"template", "protect", "session", "owner", "sock",
                               "payload_type", "history", "segmenting", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "SOOOOInp", keywords, &template, &protect, &session, &owner,
                                     &sock, &payload_type, &history, &segmenting))
        return -1;
    if (PyBytes_GET_SIZE(template) < RTP_HEADER) {
        PyErr_SetString(PyExc_ValueError, "template is shorter than an RTP header");
        return -1;
    }
    if (payload_type > 127 || history < 0 || history > 65536) {
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
        self->history = PyMem_Calloc((size_t)history, sizeof(PyObject *));
        if (self->history == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    self->history_size = history;
    self->template = Py_NewRef(template);
    self->owner = Py_NewRef(owner);
    self->sock = Py_NewRef(sock);
    self->protect = protect_ptr;
    self->session = session_ptr;
    self->payload_type = payload_type;
#ifdef __linux__
    self->segmenting = segmenting;
#else
    self->segmenting = 0;
#endif
    return 0;
}

static void Copier_dealloc(Copier *self) {
    release_pending(self);
    if (self->history != NULL) {
        for (Py_ssize_t i = 0; i < self->history_size; i++)
            Py_XDECREF(self->history[i]);
        PyMem_Free(self->history);
    }
    Py_XDECREF(self->template);
    Py_XDECREF(self->owner);
    Py_XDECREF(self->sock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Copier_flush(Copier *self, PyObject *unused) {
    (void)unused;
    flush(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Copier_retransmit_doc, "retransmit(seqs) -> int\n\n"
                                    "Send again the copies with these sequence numbers that history still "
                                    "holds; returns how many were sent.");

static PyObject *Copier_retransmit(Copier *self, PyObject *seqs) {
    PyObject *items = PySequence_Fast(seqs, "retransmit takes a list of sequence numbers");
    if (items == NULL)
        return NULL;
    long sent = 0;
    int fd = self->history_size > 0 ? viewer_fd(self) : -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n && fd >= 0; i++) {
        unsigned long seq = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(items, i));
        if (PyErr_Occurred() || seq > 0xFFFF) {
            PyErr_Clear();
            continue; /* not a sequence number: nothing to send for it */
        }
        PyObject *packet = self->history[seq % (unsigned long)self->history_size];
        /* An SRTP packet's header is in clear: its bytes 2-3 are the sequence number. */
        if (packet == NULL)
            continue;
        const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(packet);
        if (((unsigned long)data[2] << 8 | data[3]) != seq)
            continue;
        if (send(fd, data, (size_t)PyBytes_GET_SIZE(packet), MSG_DONTWAIT) < 0)
            self->dropped++;
        else
            sent++;
    }
    Py_DECREF(items);
    return PyLong_FromLong(sent);
}

static PyMethodDef Copier_methods[] = {
    {"flush", (PyCFunction)Copier_flush, METH_NOARGS, "Send the copies made since the last flush."},
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
    .tp_flags = Py_TPFLAGS_DEFAULT,
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

PyDoc_STRVAR(fan_out_doc, "fan_out(copiers, seq, timestamp, marker, payload) -> None\n\n"
                          "Every copier's copy of one packet, waiting for flush_all().");

static PyObject *fan_out(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "fan_out takes 5 arguments");
        return NULL;
    }
    if (!PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "copiers must be a list");
        return NULL;
    }
    unsigned int seq, ts;
    if (as_uint(args[1], 0xFFFFUL, &seq, "seq") < 0 || as_uint(args[2], 0xFFFFFFFFUL, &ts, "timestamp") < 0)
        return NULL;
    int marker = PyObject_IsTrue(args[3]);
    if (marker < 0)
        return NULL;
    Py_buffer payload;
    if (PyObject_GetBuffer(args[4], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *copiers = args[0];
    int failed = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(copiers) && !failed; i++) {
        PyObject *item = PyList_GET_ITEM(copiers, i);
        if (!PyObject_TypeCheck(item, &CopierType) || ((Copier *)item)->template == NULL) {
            PyErr_SetString(PyExc_TypeError, "copiers must hold initialised Copier objects");
            failed = 1;
        } else if (copy_packet((Copier *)item, seq, ts, marker, (const char *)payload.buf, payload.len) < 0) {
            failed = 1;
        }
    }
    PyBuffer_Release(&payload);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(flush_all_doc, "flush_all(copiers) -> None\n\nSend every copier's waiting copies.");

static PyObject *flush_all(PyObject *module, PyObject *copiers) {
    (void)module;
    if (!PyList_Check(copiers)) {
        PyErr_SetString(PyExc_TypeError, "copiers must be a list");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(copiers); i++) {
        PyObject *item = PyList_GET_ITEM(copiers, i);
        if (!PyObject_TypeCheck(item, &CopierType)) {
            PyErr_SetString(PyExc_TypeError, "copiers must hold Copier objects");
            return NULL;
        }
        flush((Copier *)item);
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"fan_out", (PyCFunction)(void (*)(void))fan_out, METH_FASTCALL, fan_out_doc},
    {"flush_all", (PyCFunction)flush_all, METH_O, flush_all_doc},
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
    if (PyModule_AddObjectRef(module, "Copier", (PyObject *)&CopierType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
