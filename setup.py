"""Compiles the metering core (`chores/_usage.py`, `_periods.py`, `_meter.py`,
`_line_sums.py`) with Cython.

The modules stay plain Python, and are the source of truth: Cython compiles the same
files (typed by their annotations) into extension modules that Python imports instead,
running about 2.3 times fewer instructions (benchmarks/README.md). When Cython or a C
compiler is missing, or CHORES_PURE_PYTHON=1 is set, the install goes on without them and
the package runs the same code interpreted.
"""

import os

from setuptools import Extension, setup

COMPILED = ["chores._usage", "chores._periods", "chores._meter", "chores._line_sums"]


def extensions() -> list[Extension]:
    if os.environ.get("CHORES_PURE_PYTHON") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    modules = [
        Extension(name, [name.replace(".", "/") + ".py"], optional=True) for name in COMPILED
    ]
    return cythonize(modules, language_level=3, quiet=True)


setup(ext_modules=extensions())
