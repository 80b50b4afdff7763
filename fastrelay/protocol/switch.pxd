# Cython declarations for switch.py when compiled (fastrelay/hotpath.py): the
# classes on the data path as C extension types, and C-typed locals in
# `receive`'s loop. switch.py stays the whole implementation; these only say
# what its fields and locals always hold.

cimport cython

from fastrelay.protocol.frames cimport read_frame, read_header
from fastrelay.protocol.output cimport Output

# Frame types and sizes as C integers: receive compares and adds them per frame.
cdef int T_CONNECT, T_CONNECT_RESPONSE, T_GOAWAY, T_HELLO, T_MEMBERS, T_PROBE, T_RULES
cdef int T_TUNNEL_DATA, T_TUNNEL_ERROR, T_WINDOW_UPDATE
cdef Py_ssize_t _HEADER_SIZE, _SLOT_BITS


cdef class Conn:
    cdef public bint attached
    cdef public Py_ssize_t carried
    cdef public Py_ssize_t data_bytes
    cdef public Py_ssize_t data_frames
    cdef public bint draining
    cdef public bint failed
    cdef public object id_base
    cdef public bint is_client
    cdef public double last_rx
    cdef public object link
    cdef public dict opening
    cdef public Output out
    cdef public str pool
    cdef public bint probation
    cdef public double probe_at
    cdef public str remote
    cdef public str role
    cdef public bint rules
    cdef public dict shares
    cdef public bint stalled
    cdef public dict streams
    cdef public object token


@cython.locals(
    i=Py_ssize_t,
    code=long,
    digit=long,
    hi="unsigned long long",
    lo="unsigned long long",
    high=object,
)
cpdef object _compact_session(str session_id)


cdef class Share:
    cdef public Py_ssize_t opens
    cdef public Py_ssize_t streams


cdef class Pending:
    cdef public bytes frame
    cdef public bint retried
    cdef public double sent_at


cdef class Stream:
    cdef public Conn agent
    cdef public Conn client
    cdef public Py_ssize_t down_held
    cdef public Py_ssize_t down_room
    cdef public double opened_at
    cdef public object session
    cdef public object sid
    cdef public object state
    cdef public str target
    cdef public Py_ssize_t up_held
    cdef public Py_ssize_t up_room


cdef class Switch:
    cdef public object limits
    cdef public Py_ssize_t max_message
    cdef public object instance_id
    cdef public object observer
    cdef public object stats
    cdef public dict clients
    cdef public list agents
    cdef public dict pools
    cdef public object per_token
    cdef public object slots
    cdef public list owners
    cdef public dict opening
    cdef public object members
    cdef public bint draining
    cdef public object turn
    cdef public object rules_frame
    cdef public dict targets
    cdef public Py_ssize_t token_streams
    cdef public Py_ssize_t token_opens
    cdef public bint share_capped
    cdef public Py_ssize_t client_tokens
    cdef dict __dict__

    @cython.locals(
        total=Py_ssize_t,
        offset=Py_ssize_t,
        run_start=Py_ssize_t,
        end=Py_ssize_t,
        length=Py_ssize_t,
        room=Py_ssize_t,
        frame_type=int,
        _flags=int,
        data_bytes=Py_ssize_t,
        data_frames=Py_ssize_t,
        streams=dict,
        owners=list,
        owner=Conn,
        shift=Py_ssize_t,
        slot=Py_ssize_t,
        stream=Stream,
        is_client=bint,
        out=Output,
        run_out=Output,
    )
    cpdef receive(self, Conn src, message, double now)

    # The open path's helpers, called from compiled code as C functions, with
    # the agents and shares they touch as C types.
    @cython.locals(
        agent=Conn, share=Share, opening=Py_ssize_t, streams=Py_ssize_t, shared=bint
    )
    cpdef object _pick(self, agents, Conn exclude, object token)

    @cython.locals(pending=Pending, share=Share)
    cpdef object _give(self, Stream stream, Conn agent, double now)

    @cython.locals(agent=Conn)
    cpdef object _answered(self, Stream stream)

    @cython.locals(client=Conn, agent=Conn, share=Share)
    cpdef object _end(self, Stream stream, object event, double now, str result=*)
