/* The Kafka sink's record batches in C: Kafka's record batch format v2 (magic 2, no compression), the
 * bytes aiokafka's own builder writes for the same records, written without its per-record costs.
 *
 * aiokafka's builder encodes every header name to UTF-8 twice per record (once to size the record,
 * once to write it) and returns a metadata object per record; with the nine headers of a stamped
 * message that was about 0.6-0.9 µs a message, the largest single step of the uplink. Here a header
 * name's UTF-8 is the one CPython keeps in the str, a record is sized and written in one place, and
 * the batch's CRC-32C uses the CPU's instruction where it has one.
 *
 * `kafka_batch.py` puts a `Batch` behind aiokafka's BatchBuilder interface; the producer frames,
 * sends, retries and sequences it as any other batch. tests/unit/test_bridge_kafka_batch.py checks the
 * bytes against aiokafka's builder, record by record and header by header.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Offsets in the batch header (Kafka's DefaultRecordBatch). */
#define LENGTH_OFFSET 8
#define PARTITION_LEADER_EPOCH_OFFSET 12
#define MAGIC_OFFSET 16
#define CRC_OFFSET 17
#define ATTRIBUTES_OFFSET 21
#define LAST_OFFSET_DELTA_OFFSET 23
#define FIRST_TIMESTAMP_OFFSET 27
#define MAX_TIMESTAMP_OFFSET 35
#define PRODUCER_ID_OFFSET 43
#define PRODUCER_EPOCH_OFFSET 51
#define BASE_SEQUENCE_OFFSET 53
#define RECORD_COUNT_OFFSET 57
#define FIRST_RECORD_OFFSET 61

/* --- CRC-32C (Castagnoli), as Kafka checks it ------------------------------------------------- */

static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

/* Eight bytes a step with tables, for CPUs without the instruction. */
static uint32_t crc_tables(uint32_t crc, const unsigned char *p, size_t n) {
    while (n >= 8) {
        /* The eight bytes as a little-endian word on any CPU (one load where the CPU is one). */
        uint64_t w = 0;
        for (int i = 7; i >= 0; i--)
            w = w << 8 | p[i];
        w ^= crc;
        crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^ crc_table[5][(w >> 16) & 0xff] ^
              crc_table[4][(w >> 24) & 0xff] ^ crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
              crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SSE42_CRC 1
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)c;
    while (n--)
        crc = __builtin_ia32_crc32qi(crc, *p++);
    return crc;
}
#endif

static int use_sse42 = 0;

static uint32_t crc32c(const unsigned char *p, size_t n, int hardware) {
    uint32_t crc = 0xFFFFFFFFu;
#ifdef HAVE_SSE42_CRC
    if (use_sse42 && hardware)
        return crc_sse42(crc, p, n) ^ 0xFFFFFFFFu;
#endif
    return crc_tables(crc, p, n) ^ 0xFFFFFFFFu;
}

/* --- varints (zigzag, as Kafka's records use them) ------------------------------------------- */

static inline Py_ssize_t varint_size(int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    Py_ssize_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline unsigned char *put_varint(unsigned char *out, int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    while (v >= 0x80) {
        *out++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *out++ = (unsigned char)v;
    return out;
}

static inline void put_be(unsigned char *out, uint64_t value, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) {
        out[i] = (unsigned char)value;
        value >>= 8;
    }
}

/* --- the batch ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    unsigned char *buf;
    Py_ssize_t pos;      /* bytes written, the batch header's room included */
    Py_ssize_t capacity;
    Py_ssize_t limit;    /* batch size: a record that would pass it starts the next batch (not the first) */
    int64_t first_timestamp;
    int64_t max_timestamp;
    int32_t count;
} Batch;

/* A bytes-like field: bytes directly, anything else with the buffer protocol; None has length -1. */
typedef struct {
    const char *data;
    Py_ssize_t len;
    Py_buffer view;
    int has_view;
} Field;

static int field_get(PyObject *obj, Field *f, const char *what) {
    f->has_view = 0;
    if (obj == Py_None) {
        f->data = NULL;
        f->len = -1;
        return 0;
    }
    if (PyBytes_CheckExact(obj)) {
        f->data = PyBytes_AS_STRING(obj);
        f->len = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (PyObject_GetBuffer(obj, &f->view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes-like or None, not %.100s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    f->has_view = 1;
    f->data = f->view.buf;
    f->len = f->view.len;
    return 0;
}

static void field_release(Field *f) {
    if (f->has_view)
        PyBuffer_Release(&f->view);
}

static inline Py_ssize_t field_size(const Field *f) { return f->len < 0 ? 1 : varint_size(f->len) + f->len; }

static inline unsigned char *put_field(unsigned char *out, const Field *f) {
    out = put_varint(out, f->len);
    if (f->len > 0) {
        memcpy(out, f->data, (size_t)f->len);
        out += f->len;
    }
    return out;
}

static PyObject *batch_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"limit", NULL};
    Py_ssize_t limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n", names, &limit))
        return NULL;
    Batch *self = (Batch *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->capacity = 16384;
    self->buf = PyMem_Malloc((size_t)self->capacity);
    if (self->buf == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    memset(self->buf, 0, FIRST_RECORD_OFFSET);
    self->pos = FIRST_RECORD_OFFSET;
    self->limit = limit;
    self->first_timestamp = -1;
    self->max_timestamp = -1;
    self->count = 0;
    return (PyObject *)self;
}

static void batch_dealloc(Batch *self) {
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define MAX_HEADERS 64 /* on the stack; a record with more takes the slow path below */

/* append(timestamp_ms, key, value, headers) -> bool: False when the batch is full (never for its first
 * record, as aiokafka's builder). Headers: a list of (str name, bytes-like or None value) tuples. */
static PyObject *batch_append(Batch *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "append(timestamp_ms, key, value, headers) takes 4 arguments");
        return NULL;
    }
    int64_t ts = PyLong_AsLongLong(args[0]);
    if (ts == -1 && PyErr_Occurred())
        return NULL;
    PyObject *headers = args[3];
    if (!PyList_Check(headers)) {
        PyErr_Format(PyExc_TypeError, "headers must be a list, not %.100s", Py_TYPE(headers)->tp_name);
        return NULL;
    }
    Py_ssize_t header_count = PyList_GET_SIZE(headers);
    Field key, value;
    Field stack_values[MAX_HEADERS];
    const char *stack_names[MAX_HEADERS];
    Py_ssize_t stack_name_lens[MAX_HEADERS];
    Field *h_values = stack_values;
    const char **h_names = stack_names;
    Py_ssize_t *h_name_lens = stack_name_lens;
    Py_ssize_t got = 0; /* header values taken, to release */
    PyObject *result = NULL;

    if (field_get(args[1], &key, "key") < 0)
        return NULL;
    if (field_get(args[2], &value, "value") < 0) {
        field_release(&key);
        return NULL;
    }
    if (header_count > MAX_HEADERS) {
        h_values = PyMem_Malloc(sizeof(Field) * (size_t)header_count);
        h_names = PyMem_Malloc(sizeof(char *) * (size_t)header_count);
        h_name_lens = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)header_count);
        if (h_values == NULL || h_names == NULL || h_name_lens == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }

    int64_t delta = self->first_timestamp == -1 ? 0 : ts - self->first_timestamp;
    int64_t offset = self->count;
    Py_ssize_t body = 1 + varint_size(delta) + varint_size(offset) + field_size(&key) + field_size(&value) +
                      varint_size(header_count);
    for (Py_ssize_t i = 0; i < header_count; i++) {
        PyObject *header = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(header) || PyTuple_GET_SIZE(header) != 2) {
            PyErr_SetString(PyExc_TypeError, "a header must be a (name, value) tuple");
            goto done;
        }
        PyObject *name = PyTuple_GET_ITEM(header, 0);
        if (!PyUnicode_Check(name)) {
            PyErr_Format(PyExc_TypeError, "a header name must be str, not %.100s", Py_TYPE(name)->tp_name);
            goto done;
        }
        /* The str's own UTF-8 (kept in the object after the first call): no bytes object per record. */
        h_names[i] = PyUnicode_AsUTF8AndSize(name, &h_name_lens[i]);
        if (h_names[i] == NULL)
            goto done;
        if (field_get(PyTuple_GET_ITEM(header, 1), &h_values[i], "a header value") < 0)
            goto done;
        got++;
        body += varint_size(h_name_lens[i]) + h_name_lens[i] + field_size(&h_values[i]);
    }
    Py_ssize_t size = varint_size(body) + body;
    if (self->count != 0 && self->pos + size >= self->limit) {
        result = Py_False;
        Py_INCREF(result);
        goto done;
    }
    if (self->pos + size > self->capacity) {
        Py_ssize_t capacity = self->capacity;
        while (capacity < self->pos + size)
            capacity *= 2;
        unsigned char *grown = PyMem_Realloc(self->buf, (size_t)capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        self->buf = grown;
        self->capacity = capacity;
    }
    unsigned char *out = self->buf + self->pos;
    out = put_varint(out, body);
    *out++ = 0; /* record attributes */
    out = put_varint(out, delta);
    out = put_varint(out, offset);
    out = put_field(out, &key);
    out = put_field(out, &value);
    out = put_varint(out, header_count);
    for (Py_ssize_t i = 0; i < header_count; i++) {
        out = put_varint(out, h_name_lens[i]);
        memcpy(out, h_names[i], (size_t)h_name_lens[i]);
        out += h_name_lens[i];
        out = put_field(out, &h_values[i]);
    }
    self->pos += size;
    if (self->first_timestamp == -1)
        self->first_timestamp = self->max_timestamp = ts;
    else if (ts > self->max_timestamp)
        self->max_timestamp = ts;
    self->count++;
    result = Py_True;
    Py_INCREF(result);

done:
    for (Py_ssize_t i = 0; i < got; i++)
        field_release(&h_values[i]);
    if (h_values != stack_values)
        PyMem_Free(h_values);
    if (h_names != stack_names)
        PyMem_Free((void *)h_names);
    if (h_name_lens != stack_name_lens)
        PyMem_Free(h_name_lens);
    field_release(&key);
    field_release(&value);
    return result;
}

/* build(producer_id, producer_epoch, base_sequence, transactional) -> bytes: the whole batch. */
static PyObject *batch_build(Batch *self, PyObject *args) {
    long long producer_id;
    int producer_epoch, base_sequence, transactional;
    if (!PyArg_ParseTuple(args, "Liip", &producer_id, &producer_epoch, &base_sequence, &transactional))
        return NULL;
    unsigned char *b = self->buf;
    put_be(b, 0, 8); /* base offset: the broker's */
    put_be(b + LENGTH_OFFSET, (uint64_t)(self->pos - PARTITION_LEADER_EPOCH_OFFSET), 4);
    put_be(b + PARTITION_LEADER_EPOCH_OFFSET, (uint64_t)(int64_t)-1, 4);
    b[MAGIC_OFFSET] = 2;
    put_be(b + ATTRIBUTES_OFFSET, transactional ? 0x10 : 0, 2);
    put_be(b + LAST_OFFSET_DELTA_OFFSET, (uint64_t)(self->count ? self->count - 1 : 0), 4);
    put_be(b + FIRST_TIMESTAMP_OFFSET, (uint64_t)self->first_timestamp, 8);
    put_be(b + MAX_TIMESTAMP_OFFSET, (uint64_t)self->max_timestamp, 8);
    put_be(b + PRODUCER_ID_OFFSET, (uint64_t)producer_id, 8);
    put_be(b + PRODUCER_EPOCH_OFFSET, (uint64_t)(int64_t)producer_epoch, 2);
    put_be(b + BASE_SEQUENCE_OFFSET, (uint64_t)(int64_t)base_sequence, 4);
    put_be(b + RECORD_COUNT_OFFSET, (uint64_t)self->count, 4);
    put_be(b + CRC_OFFSET, crc32c(b + ATTRIBUTES_OFFSET, (size_t)(self->pos - ATTRIBUTES_OFFSET), 1), 4);
    return PyBytes_FromStringAndSize((const char *)b, self->pos);
}

static PyObject *batch_size(Batch *self, PyObject *unused) { return PyLong_FromSsize_t(self->pos); }

static PyObject *batch_count(Batch *self, void *unused) { return PyLong_FromLong(self->count); }

static PyMethodDef batch_methods[] = {
    {"append", (PyCFunction)(void (*)(void))batch_append, METH_FASTCALL,
     "append(timestamp_ms, key, value, headers) -> bool: False when full (never for the first record)."},
    {"build", (PyCFunction)batch_build, METH_VARARGS,
     "build(producer_id, producer_epoch, base_sequence, transactional) -> bytes: the batch, CRC included."},
    {"size", (PyCFunction)batch_size, METH_NOARGS, "Bytes written so far, the batch header included."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef batch_getset[] = {
    {"count", (getter)batch_count, NULL, "Records appended.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mqtt_operator.bridge._kafka_batch.Batch",
    .tp_basicsize = sizeof(Batch),
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Batch(limit): a Kafka record batch (v2, uncompressed) built in C.",
    .tp_methods = batch_methods,
    .tp_getset = batch_getset,
    .tp_new = batch_new,
};

static PyObject *crc32c_py(PyObject *module, PyObject *args) {
    Py_buffer view;
    int tables = 0;
    if (!PyArg_ParseTuple(args, "y*|p", &view, &tables))
        return NULL;
    uint32_t crc = crc32c(view.buf, (size_t)view.len, !tables);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

static PyMethodDef module_methods[] = {
    {"crc32c", crc32c_py, METH_VARARGS,
     "crc32c(data, tables=False) -> int: CRC-32C of a bytes-like; tables: without the CPU's instruction (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kafka_batch", "Kafka record batches (v2) built in C (see kafka_batch.py).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__kafka_batch(void) {
    crc_init();
#ifdef HAVE_SSE42_CRC
    __builtin_cpu_init();
    use_sse42 = __builtin_cpu_supports("sse4.2");
#endif
    if (PyType_Ready(&BatchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(m, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(&BatchType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
