/* The uplink's hot path in C: reading a run of PUBLISH packets out of the bytes the broker sent.
 *
 * `mqtt5.decode_stream` is the decoder; this module only takes the packets every worker sees by the
 * hundred thousand off its hands: a PUBLISH whose topic is UTF-8, with no properties or with nothing
 * but the broker plugin's stamps in the plugin's order. At anything else (another packet type, other
 * properties, a packet not complete yet, a length that does not hold, text that is not UTF-8) it stops
 * and returns where it stopped: the Python decoder reads that packet, says what is wrong with it, and
 * calls here again. So this file never decides an error, and for every packet it does read, the result
 * is the one the Python decoder gives (tests/unit/test_bridge_mqtt5_publish.py checks both on the same
 * packets, paho's included).
 *
 * Why C: the stamps are three or four length-prefixed strings per message, and in Python reading them
 * cost the worker about 1 µs of the 5-7 µs it spent on a message (docs/broker-plugin.md).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define PUBLISH 3
#define STAMPS 4 /* client id, address, message id, received at: then Stamps.time_ms */
#define STAMP_MESSAGE_ID 2
#define STAMP_RECEIVED_AT 3

enum { SLOT_TOPIC, SLOT_PAYLOAD, SLOT_QOS, SLOT_RETAIN, SLOT_DUP, SLOT_PACKET_ID, SLOT_PROPS,
       SLOT_RECEIVED, SLOT_MALFORMED, SLOT_STAMPS, SLOT_COUNT };

static const char *slot_names[SLOT_COUNT] = {
    "topic", "payload", "qos", "retain", "dup", "packet_id", "props", "received", "malformed", "stamps",
};

/* What configure() was given: the classes the Python decoder builds and the stamps' wire heads. */
typedef struct {
    PyTypeObject *message_type;
    PyObject *slots[SLOT_COUNT]; /* Message's slot descriptors */
    PyTypeObject *stamps_type;
    PyObject *no_stamps;
    PyObject *heads[STAMPS]; /* bytes: identifier 0x26, name length, name; in the plugin's order */
    int configured;
} State;

static State state;

/* len(getattr(type, name)) == expected, else an error that says which shape changed. */
static int has_length(PyObject *type, const char *name, Py_ssize_t expected) {
    PyObject *seq = PyObject_GetAttrString(type, name);
    if (seq == NULL)
        return 0;
    Py_ssize_t got = PyObject_Length(seq);
    Py_DECREF(seq);
    if (got < 0)
        return 0;
    if (got != expected) {
        PyErr_Format(PyExc_TypeError, "%s.%s has %zd entries, _publish.c knows %zd: change both together",
                     ((PyTypeObject *)type)->tp_name, name, got, expected);
        return 0;
    }
    return 1;
}

/* configure(Message, Stamps, NO_STAMPS, heads): once, from mqtt5.py, so the names of the stamps and the
 * shape of a Message have one home (records.py) and this file follows them. */
static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *message_type, *stamps_type, *no_stamps, *heads;
    if (!PyArg_ParseTuple(args, "O!O!OO!", &PyType_Type, &message_type, &PyType_Type, &stamps_type,
                          &no_stamps, &PyTuple_Type, &heads))
        return NULL;
    if (PyTuple_GET_SIZE(heads) != STAMPS) {
        PyErr_Format(PyExc_ValueError, "configure() takes %d stamp heads", STAMPS);
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)stamps_type, &PyTuple_Type) ||
        ((PyTypeObject *)stamps_type)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "Stamps must be a tuple subclass with no fields of its own");
        return NULL;
    }
    /* Every slot of a Message is set here, and a Stamps is built here: a field added in records.py
     * without this file would be left unset, so the import fails instead. */
    if (!has_length(message_type, "__slots__", SLOT_COUNT) || !has_length(stamps_type, "_fields", STAMPS + 1))
        return NULL;
    for (int i = 0; i < SLOT_COUNT; i++) {
        PyObject *slot = PyObject_GetAttrString(message_type, slot_names[i]);
        if (slot == NULL)
            return NULL;
        if (Py_TYPE(slot)->tp_descr_set == NULL) {
            PyErr_Format(PyExc_TypeError, "Message.%s is not a slot", slot_names[i]);
            Py_DECREF(slot);
            return NULL;
        }
        Py_XSETREF(state.slots[i], slot);
    }
    for (int i = 0; i < STAMPS; i++) {
        PyObject *head = PyTuple_GET_ITEM(heads, i);
        if (!PyBytes_Check(head)) {
            PyErr_SetString(PyExc_TypeError, "the stamp heads are bytes");
            return NULL;
        }
        Py_INCREF(head);
        Py_XSETREF(state.heads[i], head);
    }
    Py_INCREF(message_type);
    Py_XSETREF(state.message_type, (PyTypeObject *)message_type);
    Py_INCREF(stamps_type);
    Py_XSETREF(state.stamps_type, (PyTypeObject *)stamps_type);
    Py_INCREF(no_stamps);
    Py_XSETREF(state.no_stamps, no_stamps);
    state.configured = 1;
    Py_RETURN_NONE;
}

/* A variable byte integer at `*at` (MQTT 5 1.5.5), not past `end`; -1 when it is not complete or runs
 * past four bytes (both for the Python decoder to handle). */
static Py_ssize_t read_varint(const unsigned char *b, Py_ssize_t *at, Py_ssize_t end) {
    Py_ssize_t value = 0;
    for (int shift = 0; shift < 28; shift += 7) {
        if (*at >= end)
            return -1;
        unsigned char byte = b[(*at)++];
        value |= (Py_ssize_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80))
            return value;
    }
    return -1;
}

/* An ASCII hex digit's value, else -1. */
static long long hex_digit(Py_UCS4 c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The broker's receive time in epoch milliseconds, as `mqtt5.stamp_time_ms` reads it: the receivedAt
 * stamp when it is 1 to 15 ASCII digits, else the first 48 bits of a UUIDv7 message id (36 characters,
 * dashes at 8 and 13, version 7 at 14, hex digits before), else -1 (None). Either may be NULL. */
static long long stamp_time_ms(PyObject *received_at, PyObject *message_id) {
    if (received_at != NULL) {
        Py_ssize_t len = PyUnicode_GET_LENGTH(received_at);
        if (len >= 1 && len <= 15) {
            long long ms = 0;
            Py_ssize_t i = 0;
            for (; i < len; i++) {
                Py_UCS4 c = PyUnicode_READ_CHAR(received_at, i);
                if (c < '0' || c > '9')
                    break;
                ms = ms * 10 + (c - '0');
            }
            if (i == len)
                return ms;
        }
    }
    if (message_id == NULL || PyUnicode_GET_LENGTH(message_id) != 36 ||
        PyUnicode_READ_CHAR(message_id, 8) != '-' || PyUnicode_READ_CHAR(message_id, 13) != '-' ||
        PyUnicode_READ_CHAR(message_id, 14) != '7')
        return -1;
    long long ms = 0;
    for (Py_ssize_t i = 0; i < 13; i++) {
        if (i == 8)
            continue;
        long long digit = hex_digit(PyUnicode_READ_CHAR(message_id, i));
        if (digit < 0)
            return -1;
        ms = (ms << 4) | digit;
    }
    return ms;
}

/* The stamps when they are all the properties between `p` and `end`, in the plugin's order: a new
 * Stamps; NULL with no error set when the properties are anything else (or not UTF-8), NULL with the
 * error set when an allocation failed. */
static PyObject *read_stamps(const unsigned char *b, Py_ssize_t p, Py_ssize_t end) {
    PyObject *values[STAMPS] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < STAMPS; i++) {
        Py_ssize_t head_len = PyBytes_GET_SIZE(state.heads[i]);
        if (end - p < head_len + 2 || memcmp(b + p, PyBytes_AS_STRING(state.heads[i]), head_len) != 0)
            continue;
        p += head_len;
        Py_ssize_t len = (b[p] << 8) | b[p + 1];
        p += 2;
        if (len > end - p)
            goto other;
        values[i] = PyUnicode_DecodeUTF8((const char *)b + p, len, NULL);
        if (values[i] == NULL) {
            PyErr_Clear();
            goto other;
        }
        p += len;
    }
    if (p != end)
        goto other;
    long long ms = stamp_time_ms(values[STAMP_RECEIVED_AT], values[STAMP_MESSAGE_ID]);
    PyObject *time_ms = ms < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(ms);
    if (time_ms == NULL)
        goto other;
    PyObject *stamps = state.stamps_type->tp_alloc(state.stamps_type, STAMPS + 1);
    if (stamps == NULL) {
        Py_DECREF(time_ms);
        goto other;
    }
    for (int i = 0; i < STAMPS; i++)
        PyTuple_SET_ITEM(stamps, i, values[i] != NULL ? values[i] : Py_NewRef(Py_None));
    PyTuple_SET_ITEM(stamps, STAMPS, time_ms);
    return stamps;
other: /* and a failed allocation, with its error set */
    for (int i = 0; i < STAMPS; i++)
        Py_XDECREF(values[i]);
    return NULL;
}

static int set_slot(PyObject *message, int slot, PyObject *value) {
    /* Steals `value`. */
    if (value == NULL)
        return -1;
    PyObject *descr = state.slots[slot];
    int rc = Py_TYPE(descr)->tp_descr_set(descr, message, value);
    Py_DECREF(value);
    return rc;
}

/* read_publishes(buf, pos, received, messages) -> pos: appends a Message to `messages` for each PUBLISH
 * from `pos` on that this module reads (see the top of the file) and returns where the first packet it
 * does not read begins (len(buf) when it read them all). */
static PyObject *read_publishes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1]) || !PyList_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "read_publishes(buf: bytes, pos: int, received, messages: list)");
        return NULL;
    }
    if (!state.configured) {
        PyErr_SetString(PyExc_RuntimeError, "read_publishes() before configure()");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "pos is negative");
        return NULL;
    }
    PyObject *received = args[2];
    PyObject *messages = args[3];

    while (pos + 2 <= n) {
        unsigned char first = b[pos];
        int qos = (first >> 1) & 3;
        if ((first >> 4) != PUBLISH || qos == 3)
            break;
        Py_ssize_t start = pos + 1;
        Py_ssize_t length = read_varint(b, &start, n);
        if (length < 0)
            break;
        Py_ssize_t end = start + length;
        if (end > n || length < 2)
            break;
        Py_ssize_t tlen = (b[start] << 8) | b[start + 1];
        Py_ssize_t p = start + 2 + tlen;
        if (tlen == 0 || p > end)
            break;
        long packet_id = 0;
        if (qos) {
            if (p + 2 > end)
                break;
            packet_id = (b[p] << 8) | b[p + 1];
            p += 2;
        }
        Py_ssize_t plen = read_varint(b, &p, end);
        if (plen < 0 || plen > end - p)
            break;
        PyObject *stamps;
        if (plen == 0) {
            stamps = Py_NewRef(state.no_stamps);
        } else {
            stamps = read_stamps(b, p, p + plen);
            if (stamps == NULL) {
                if (PyErr_Occurred())
                    return NULL;
                break;
            }
        }
        p += plen;
        PyObject *topic = PyUnicode_DecodeUTF8((const char *)b + start + 2, tlen, NULL);
        if (topic == NULL) {
            PyErr_Clear();
            Py_DECREF(stamps);
            break;
        }
        PyObject *message = state.message_type->tp_alloc(state.message_type, 0);
        if (message == NULL) {
            Py_DECREF(topic);
            Py_DECREF(stamps);
            return NULL;
        }
        int given = set_slot(message, SLOT_TOPIC, Py_NewRef(topic)) == 0 &&
                    set_slot(message, SLOT_STAMPS, Py_NewRef(stamps)) == 0;
        Py_DECREF(topic);
        Py_DECREF(stamps);
        if (!given ||
            set_slot(message, SLOT_PAYLOAD, PyBytes_FromStringAndSize((const char *)b + p, end - p)) < 0 ||
            set_slot(message, SLOT_QOS, PyLong_FromLong(qos)) < 0 ||
            set_slot(message, SLOT_RETAIN, PyBool_FromLong(first & 1)) < 0 ||
            set_slot(message, SLOT_DUP, PyBool_FromLong(first & 8)) < 0 ||
            set_slot(message, SLOT_PACKET_ID, PyLong_FromLong(packet_id)) < 0 ||
            set_slot(message, SLOT_PROPS, Py_NewRef(Py_None)) < 0 ||
            set_slot(message, SLOT_RECEIVED, Py_NewRef(received)) < 0 ||
            set_slot(message, SLOT_MALFORMED, Py_NewRef(Py_None)) < 0 ||
            PyList_Append(messages, message) < 0) {
            Py_DECREF(message);
            return NULL;
        }
        Py_DECREF(message);
        pos = end;
    }
    return PyLong_FromSsize_t(pos);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(Message, Stamps, NO_STAMPS, heads): once, before reading."},
    {"read_publishes", (PyCFunction)(void (*)(void))read_publishes, METH_FASTCALL,
     "read_publishes(buf, pos, received, messages) -> pos: the PUBLISHes this module reads, from pos on."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_publish", "The uplink's PUBLISH packets read in C (see mqtt5.decode_stream).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__publish(void) { return PyModule_Create(&module); }
