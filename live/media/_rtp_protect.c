/* One viewer's copy of a forwarded RTP packet, made in one call: the viewer's header (from a template,
 * with this packet's marker and payload type, sequence number and timestamp written in), the payload,
 * and SRTP protection with the viewer's libsrtp session, called through the function pointer that
 * pylibsrtp's binding exposes (so nothing links against libsrtp here).
 *
 * Done in Python, the same steps cost several interpreter calls per copy (struct packing, copies into
 * and out of a cffi buffer, a cffi call): most of a copy's cost after the kernel's send.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef int (*srtp_protect_fn)(void *ctx, void *packet, int *length);

#define PACKET_BUFFER 2048
#define SRTP_TRAILER_ROOM 144 /* pylibsrtp.SRTP_MAX_TRAILER_LEN */
#define RTP_HEADER 12

static int as_uint(PyObject *value, unsigned long limit, unsigned long *out, const char *name) {
    unsigned long v = PyLong_AsUnsignedLong(value);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > limit) {
        PyErr_Format(PyExc_ValueError, "%s out of range", name);
        return -1;
    }
    *out = v;
    return 0;
}

PyDoc_STRVAR(protect_rtp_doc,
             "protect_rtp(protect, session, template, seq, timestamp, marker_pt, payload) -> bytes | None\n\n"
             "The SRTP packet of ``template`` (a 12-byte RTP header and its extension block) with byte 1 set\n"
             "to ``marker_pt``, the sequence number and timestamp written in, followed by ``payload``;\n"
             "protected by calling ``protect`` (the address of libsrtp's srtp_protect) on ``session`` (an\n"
             "srtp_t). None if the packet is too large or libsrtp refuses it.");

static PyObject *protect_rtp(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "protect_rtp takes 7 arguments");
        return NULL;
    }
    void *protect = PyLong_AsVoidPtr(args[0]);
    if (protect == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "protect is NULL");
        return NULL;
    }
    void *session = PyLong_AsVoidPtr(args[1]);
    if (session == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "session is NULL");
        return NULL;
    }
    if (!PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "template must be bytes");
        return NULL;
    }
    Py_ssize_t template_len = PyBytes_GET_SIZE(args[2]);
    if (template_len < RTP_HEADER) {
        PyErr_SetString(PyExc_ValueError, "template is shorter than an RTP header");
        return NULL;
    }
    unsigned long seq, timestamp, marker_pt;
    if (as_uint(args[3], 0xFFFFUL, &seq, "seq") < 0 || as_uint(args[4], 0xFFFFFFFFUL, &timestamp, "timestamp") < 0 ||
        as_uint(args[5], 0xFFUL, &marker_pt, "marker_pt") < 0)
        return NULL;
    Py_buffer payload;
    if (PyObject_GetBuffer(args[6], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    if (template_len + payload.len + SRTP_TRAILER_ROOM > PACKET_BUFFER) {
        PyBuffer_Release(&payload);
        Py_RETURN_NONE;
    }
    uint32_t aligned[PACKET_BUFFER / 4]; /* libsrtp reads the header as 32-bit words */
    unsigned char *packet = (unsigned char *)aligned;
    memcpy(packet, PyBytes_AS_STRING(args[2]), (size_t)template_len);
    packet[1] = (unsigned char)marker_pt;
    packet[2] = (unsigned char)(seq >> 8);
    packet[3] = (unsigned char)seq;
    packet[4] = (unsigned char)(timestamp >> 24);
    packet[5] = (unsigned char)(timestamp >> 16);
    packet[6] = (unsigned char)(timestamp >> 8);
    packet[7] = (unsigned char)timestamp;
    memcpy(packet + template_len, payload.buf, (size_t)payload.len);
    int length = (int)(template_len + payload.len);
    PyBuffer_Release(&payload);
    if (((srtp_protect_fn)protect)(session, packet, &length) != 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)packet, length);
}

static PyMethodDef methods[] = {
    {"protect_rtp", (PyCFunction)(void (*)(void))protect_rtp, METH_FASTCALL, protect_rtp_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "live.media._rtp_protect", "A viewer's SRTP copy of a forwarded packet, in one call.", 0,
    methods,
};

PyMODINIT_FUNC PyInit__rtp_protect(void) { return PyModule_Create(&module); }
