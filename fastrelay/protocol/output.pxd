# Cython declarations for output.py when compiled (fastrelay/hotpath.py): the
# base of every outgoing sink as a C extension type, so the switch and the
# session call `write` through its vtable. output.py stays the implementation.

cdef class Output:
    cpdef write(self, frames)
    cpdef write_external(self, bytearray buf, Py_ssize_t offset)
