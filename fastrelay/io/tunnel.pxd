# Cython declarations for tunnel.py when compiled (fastrelay/hotpath.py).

from fastrelay.protocol.session cimport Stream

cpdef filled(Stream stream, Py_ssize_t n)
