# Cython declarations for compiling chores/_periods.py (setup.py): C-level calls from _usage,
# and datetime fields read as C struct fields.
from cpython.datetime cimport datetime

cpdef datetime as_utc(datetime moment)
cpdef str period_of(datetime moment)
