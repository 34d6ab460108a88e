# Cython declarations for compiling chores/_meter.py (setup.py): a C-level call to
# `runner_key` for every document. The module itself stays plain Python.
from chores._usage cimport runner_key
