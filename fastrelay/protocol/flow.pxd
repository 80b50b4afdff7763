# Cython declarations for flow.py when compiled (fastrelay/hotpath.py): the
# credit windows as C extension types. flow.py stays the whole implementation.

cimport cython

cpdef Py_ssize_t update_threshold(Py_ssize_t window)
@cython.locals(factor=double)
cpdef double cut_factor(double queueing, double base)


cdef class SendWindow:
    cdef public Py_ssize_t available
    cdef public Py_ssize_t held
    cdef public Py_ssize_t unacked

    cpdef consume(self, Py_ssize_t n)
    @cython.locals(total=Py_ssize_t, unacked=Py_ssize_t)
    cpdef grant(self, Py_ssize_t increment, Py_ssize_t cap=*)
    @cython.locals(total=Py_ssize_t, room=Py_ssize_t)
    cpdef bint limit(self, Py_ssize_t cap) except -1


cdef class RecvWindow:
    cdef public Py_ssize_t outstanding
    cdef public Py_ssize_t target
    cdef public Py_ssize_t unreturned
    cdef public Py_ssize_t update_threshold
    cdef public Py_ssize_t window

    cpdef received(self, Py_ssize_t n)
    cpdef Py_ssize_t release(self, Py_ssize_t n, CreditPool pool=*, bint now=*) except -1
    @cython.locals(largest=Py_ssize_t)
    cpdef grow(self, CreditPool pool)
    cpdef Py_ssize_t flush(self) except -1


cdef class CreditPool:
    cdef public Py_ssize_t budget
    cdef public bint calm
    cdef public Py_ssize_t cap
    cdef public Py_ssize_t floor
    cdef public Py_ssize_t granted
    cdef public bint growing
    cdef public Py_ssize_t max_streams
    cdef public Py_ssize_t max_window
    cdef public Py_ssize_t peak
    cdef public Py_ssize_t send_cap
    cdef public Py_ssize_t streams
    cdef public Py_ssize_t want

    @cython.locals(peak=Py_ssize_t, cap=Py_ssize_t, cut=Py_ssize_t)
    cpdef bint pace(self, double queueing, double base=*) except -1
    @cython.locals(cap=Py_ssize_t, cut=Py_ssize_t)
    cpdef bint pace_send(self, double queueing, double base, Py_ssize_t largest) except -1
    cpdef Py_ssize_t adjust(self, Py_ssize_t window, Py_ssize_t withheld, Py_ssize_t target=*) except? -1


cdef class PathDelay:
    cdef public double base
    cdef public double bucket_end
    cdef public bint cut
    cdef public double last
    cdef public list mins
    cdef public double next_probe
    cdef public double queue_in
    cdef public double queue_out
    cdef public double sent_at
    cdef public Py_ssize_t token
    cdef public list ways
    cdef public double ways_end

    @cython.locals(base=double)
    cpdef sent(self, double now)
    cpdef double answered(self, double now) except? -2
    @cython.locals(
        sent_at=double, queueing=double, out=double, back=double, least_out=double,
        least_back=double, queue_out=double, queue_in=double, i=Py_ssize_t, ways=list,
    )
    cpdef double answered_stamped(self, double now, double stamp) except? -2
    cpdef observe(self, double rtt, double now)
    @cython.locals(late=double, base=double)
    cpdef double late(self, double now) except? -2
    cpdef double queueing(self, double now) except? -2
