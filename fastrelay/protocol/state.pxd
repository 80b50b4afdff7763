# Cython declarations for state.py when compiled (fastrelay/hotpath.py).

cdef class StreamState:
    cdef public object state
