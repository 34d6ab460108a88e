# Cython declarations for compiling chores/_usage.py (setup.py): the helpers that `verdict`
# calls on every document become direct C calls, and the plain tuples they return are
# unpacked without a type check. The module itself stays plain Python.
from chores._periods cimport as_utc, period_of

cpdef object read_counters(object context)
cpdef tuple breakdown(object counters)
cpdef tuple new_usage(object high_water, object previous)
cpdef tuple own_counters(object snapshot, object baseline)
cpdef tuple highest(object first, object second)
cpdef bint decreased(object current, object before)
cpdef tuple read_spawn(object spawn_contexts, str org)
cpdef object _latest_end(object now, double future_skew_seconds)
cpdef str runner_key(object source_id)
cpdef tuple verdict(object doc, object spawn_contexts, object head, object now,
                    object max_tokens_per_run, double future_skew_seconds, str runner_id)
cpdef tuple _held(str runner_id, str org, str period, bint pending, tuple flags,
                  str kind, str detail)
cpdef bint is_subagent_context(object context)
