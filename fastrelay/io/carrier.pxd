# Cython declarations for carrier.py when compiled (fastrelay/hotpath.py): the
# endpoint's relay listener as a C extension type of picows' WSListener, so
# picows calls `on_ws_frame` in C and the frame's fields are read without
# Python objects. carrier.py stays the whole implementation.

from picows cimport picows

from fastrelay.io.mux cimport FlushScheduler
from fastrelay.protocol.session cimport Session

cdef picows.WSMsgType _BINARY, _CLOSE, _PING, _PONG


cdef class CarrierListener(picows.WSListener):
    cdef public object carrier
    cdef public Session session
    cdef public FlushScheduler scheduler
    cdef public double ping_sent_at

    cpdef on_ws_frame(self, picows.WSTransport transport, picows.WSFrame frame)
