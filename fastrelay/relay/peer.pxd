# Cython declarations for peer.py when compiled (fastrelay/hotpath.py): the
# relay's listener as a C extension type of picows' WSListener, so picows
# calls `on_ws_frame` in C and reads of the frame's fields make no Python
# objects. peer.py stays the whole implementation.

from picows cimport picows

from fastrelay.io.mux cimport FlushScheduler, MuxWriter
from fastrelay.protocol.switch cimport Conn, Switch

cdef picows.WSMsgType _BINARY, _CLOSE, _PONG, _PING


cdef class Peer(picows.WSListener):
    cdef public bint rules
    cdef public str pool
    cdef public object relay
    cdef public Switch switch
    cdef public FlushScheduler scheduler
    cdef public str role
    cdef public str remote
    cdef public object token
    cdef public double ping_sent_at
    cdef public object transport
    cdef public MuxWriter writer
    cdef public Conn conn
    cdef public bint closed
    cdef public object forwarded_for
    cdef public object close_reason

    cpdef on_ws_frame(self, picows.WSTransport transport, picows.WSFrame frame)
