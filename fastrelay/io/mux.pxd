# Cython declarations for mux.py when compiled (fastrelay/hotpath.py): the same
# classes as C extension types, so the per-message calls and fields skip
# Python's attribute look-ups. The .py file stays the whole implementation.

cimport cython
from aiofastnet.transport cimport Protocol as FastProtocol
from picows cimport picows

from fastrelay.protocol.output cimport Output

cdef Py_ssize_t _LARGE_FRAME
cdef picows.WSMsgType _BINARY


cdef class FlushScheduler:
    cdef public object call_soon
    cdef public list dirty
    cdef public object flush_cb
    cdef public bint in_frame
    cdef public bint scheduled

    cpdef mark(self, MuxWriter writer)
    cpdef frame_done(self, bint last_in_buffer)
    @cython.locals(writer=MuxWriter)
    cpdef flush_all(self)


cdef class MuxWriter(Output):
    cdef public Py_ssize_t batch_limit
    cdef public bint closed
    cdef public Py_ssize_t messages
    cdef public bytearray pending
    cdef public FlushScheduler scheduler
    cdef public picows.WSTransport transport  # send() is a C call, not a Python one

    cpdef peer_accepts(self, Py_ssize_t max_message)
    @cython.locals(n=Py_ssize_t, size=Py_ssize_t, pending=bytearray)
    cpdef write(self, frames)
    cpdef write_external(self, bytearray buf, Py_ssize_t offset)
    cpdef flush(self)
    cpdef close(self)


cdef Py_ssize_t _WS_READ_SIZE


cdef class BoundedReads(FastProtocol):
    cdef public object ws
