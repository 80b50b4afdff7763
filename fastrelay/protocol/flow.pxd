# Cython declarations for flow.py when compiled (fastrelay/hotpath.py): the
# credit windows as C extension types. flow.py stays the whole implementation.

cpdef Py_ssize_t update_threshold(Py_ssize_t window)


cdef class SendWindow:
    cdef public Py_ssize_t available

    cpdef consume(self, Py_ssize_t n)
    cpdef grant(self, Py_ssize_t increment)


cdef class RecvWindow:
    cdef public Py_ssize_t outstanding
    cdef public Py_ssize_t target
    cdef public Py_ssize_t unreturned
    cdef public Py_ssize_t update_threshold
    cdef public Py_ssize_t window

    cpdef received(self, Py_ssize_t n)
    cpdef Py_ssize_t release(self, Py_ssize_t n, CreditPool pool=*, bint now=*) except -1
    cpdef grow(self, CreditPool pool)
    cpdef Py_ssize_t flush(self) except -1


cdef class CreditPool:
    cdef public Py_ssize_t budget
    cdef public Py_ssize_t floor
    cdef public Py_ssize_t granted
    cdef public Py_ssize_t max_streams
    cdef public Py_ssize_t max_window
    cdef public Py_ssize_t streams
    cdef public Py_ssize_t want

    cpdef Py_ssize_t adjust(self, Py_ssize_t window, Py_ssize_t withheld, Py_ssize_t target=*) except? -1
