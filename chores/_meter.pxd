# Cython declarations for compiling chores/_meter.py (setup.py): C-level calls to
# `runner_key` and `verdict` for every document. The module itself stays plain Python.
from chores._usage cimport runner_key, verdict
