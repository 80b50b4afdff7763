# Cython declarations for frames.py when compiled (fastrelay/hotpath.py): the
# frame walker with C-typed locals, callable from the session and the switch
# without a Python call. frames.py stays the whole implementation.

cimport cython

cdef int _WINDOW_UPDATE, _FIN


@cython.locals(left=Py_ssize_t, start=Py_ssize_t, length=Py_ssize_t, frame_type=int, flags=int)
cpdef tuple read_frame(message, Py_ssize_t offset)

cpdef check_header(int frame_type, stream_id, Py_ssize_t length, Py_ssize_t available)
