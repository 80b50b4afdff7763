# Cython declarations for tunnel.py when compiled (fastrelay/hotpath.py).

from aiofastnet.transport cimport Protocol as FastProtocol

from fastrelay.protocol.session cimport Stream

cpdef filled(Stream stream, Py_ssize_t n)
cpdef read_buffer(Stream stream)


cdef class StreamSocket(FastProtocol):
    cdef public object stream
    cdef public object owner
    cdef public object transport
    cdef public object sock


cdef class _LoopSocket:
    cdef public Py_ssize_t fd
    cdef public object stream
    cdef public object transport
