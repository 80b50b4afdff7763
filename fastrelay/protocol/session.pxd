# Cython declarations for session.py when compiled (fastrelay/hotpath.py): a
# stream and its session as C extension types, with C-typed locals on the
# per-message path. session.py stays the whole implementation.

cimport cython

from fastrelay.protocol.frames cimport read_frame, write_header
from fastrelay.protocol.output cimport Output

# Frame types as C integers for the comparisons in receive and the control path.
cdef int T_CONNECT, T_CONNECT_RESPONSE, T_FIN, T_GOAWAY, T_HELLO, T_MEMBERS
cdef int T_PROBE, T_REQUEST, T_RULES, T_TUNNEL_DATA, T_TUNNEL_ERROR, T_WINDOW_UPDATE

from fastrelay.protocol.flow cimport CreditPool, PathDelay, RecvWindow, SendWindow
from fastrelay.protocol.state cimport StreamState


cdef class Stream:
    cdef public object accepts_in
    cdef public object accepts_out
    cdef public object backlog
    cdef public Py_ssize_t bytes_in
    cdef public Py_ssize_t bytes_out
    cdef public double deadline
    cdef public object end
    cdef public bint eof_pending
    cdef public str error
    cdef public bint one_exchange
    cdef public bint opened
    cdef public double opened_at
    cdef public object owner
    cdef public int paused
    cdef public bint read_eof
    cdef public RecvWindow recv_window
    cdef public object response
    cdef public SendWindow send_window
    cdef public Session session
    cdef public str session_id
    cdef public object sid
    cdef public object side
    cdef public object socket
    cdef public bint socket_write_paused
    cdef public double started_at
    cdef public StreamState state
    cdef public Py_ssize_t undrained

    @cython.locals(session=Session, avail=Py_ssize_t, blocked=int)
    cpdef bint send_in_place(self, bytearray buf, Py_ssize_t at, Py_ssize_t n, bint alone=*) except -1

    @cython.locals(n=Py_ssize_t)
    cpdef _deliver(self, payload, int flags=*)

    @cython.locals(increment=Py_ssize_t)
    cpdef _return_credit(self, Py_ssize_t n, bint now=*)

    cpdef _pause(self, int why)
    cpdef _unpause(self, int why)


cdef class Session:
    cdef public object link
    cdef public str pool
    cdef public object abort_socket
    cdef public Output out
    cdef public object events
    cdef public object stats
    cdef public object side
    cdef public object want
    cdef public object max_window
    cdef public object max_frame_size
    cdef public Py_ssize_t max_chunk
    cdef public object open_timeout
    cdef public dict streams
    cdef public object hello
    cdef public CreditPool credit
    cdef public bint goaway
    cdef public bint leaving
    cdef public bint lost
    cdef public bint closing
    cdef public bint paused
    cdef public list waiting
    cdef public object sid_cursor
    cdef public object expiry
    cdef public PathDelay path
    cdef public bint probing
    cdef public bint probe_frames

    @cython.locals(
        streams=dict,
        total=Py_ssize_t,
        offset=Py_ssize_t,
        start=Py_ssize_t,
        frame_type=int,
        flags=int,
        stream=Stream,
        path=PathDelay,
    )
    cpdef receive(self, message, double now)
