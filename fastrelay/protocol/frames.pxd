# Cython declarations for frames.py when compiled (fastrelay/hotpath.py): the
# frame walker with C-typed locals, callable from the session and the switch
# without a Python call. frames.py stays the whole implementation, apart from
# `_header_in_place` and `_header_into`, the compiled halves of `read_header`
# and `write_header`: C that the interpreter has no use for.

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

ctypedef (int, int, unsigned int, Py_ssize_t) Header

cdef bint _COMPILED
cdef int _WINDOW_UPDATE, _FIN, _PROBE


cdef inline Header _header_in_place(object message, Py_ssize_t offset) except *:
    # The buffer as struct.unpack_from takes it (PyBUF_SIMPLE: one contiguous
    # run of bytes, so a released or strided view raises what struct raises),
    # read in place. Type -1: the header is not inside the buffer, and the
    # caller lets struct say so.
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Header header = (-1, 0, 0, 0)
    PyObject_GetBuffer(message, &view, PyBUF_SIMPLE)
    if 0 <= offset and view.len - offset >= 10:
        p = <const unsigned char*>view.buf + offset
        header = (
            p[0],
            p[1],
            (<unsigned int>p[2] << 24) | (<unsigned int>p[3] << 16) | (<unsigned int>p[4] << 8) | p[5],
            (<Py_ssize_t>p[6] << 24) | (<Py_ssize_t>p[7] << 16) | (<Py_ssize_t>p[8] << 8) | p[9],
        )
    PyBuffer_Release(&view)
    return header


cdef inline bint _header_into(
    object buf, Py_ssize_t at, long long frame_type, long long flags, long long stream_id,
    long long length
) except -1:
    # A bytearray with the ten bytes inside it and every field in its range:
    # stored in place, True. Anything else: False, and struct does it.
    cdef unsigned char* p
    if type(buf) is not bytearray or at < 0 or PyByteArray_GET_SIZE(buf) - at < 10:
        return False
    if not (0 <= frame_type <= 0xFF and 0 <= flags <= 0xFF):
        return False
    if not (0 <= stream_id <= 0xFFFFFFFF and 0 <= length <= 0xFFFFFFFF):
        return False
    p = <unsigned char*>PyByteArray_AS_STRING(buf) + at
    p[0] = <unsigned char>frame_type
    p[1] = <unsigned char>flags
    p[2] = <unsigned char>(stream_id >> 24)
    p[3] = <unsigned char>(stream_id >> 16)
    p[4] = <unsigned char>(stream_id >> 8)
    p[5] = <unsigned char>stream_id
    p[6] = <unsigned char>(length >> 24)
    p[7] = <unsigned char>(length >> 16)
    p[8] = <unsigned char>(length >> 8)
    p[9] = <unsigned char>length
    return True


@cython.locals(header=Header)
cpdef Header read_header(object message, Py_ssize_t offset)

@cython.locals(left=Py_ssize_t, start=Py_ssize_t, length=Py_ssize_t, frame_type=int, flags=int)
cpdef tuple read_frame(message, Py_ssize_t offset)

cpdef write_header(
    object buf, Py_ssize_t at, long long frame_type, long long flags, long long stream_id,
    long long length
)

cpdef check_header(int frame_type, stream_id, Py_ssize_t length, Py_ssize_t available)
