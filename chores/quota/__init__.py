"""Quota: plans, the decision of each org (`decisions`), its Redis mirror (`cache`), and
`check_quota` (`check`).

May import: `chores.core` and `chores.metering` (its `chunked`), as its rank allows.
"""
