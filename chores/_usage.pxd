# Cython declarations for compiling chores/_usage.py (setup.py): the helpers that `assess`
# calls on every document become direct C calls. The module itself stays plain Python.
from chores._periods cimport as_utc, period_of

cpdef object parse_counters(object context)
cpdef object breakdown(object counters)
cpdef object new_usage(object high_water, object previous)
cpdef object own_counters(object snapshot, object baseline)
cpdef object highest(object first, object second)
cpdef bint decreased(object current, object before)
cpdef tuple read_spawn(object spawn_contexts)
cpdef object _latest_end(object now)
cpdef str runner_key(object source_id)
