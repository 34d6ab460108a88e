# Cython declarations for compiling chores/_line_sums.py (setup.py): the plain tuples these
# return are unpacked without a type check. The module itself stays plain Python.
cpdef tuple line_of(object group, object registry)
cpdef tuple sum_by_line(object groups, object registry, object memo)
