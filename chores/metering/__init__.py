"""Metering: the usage rules (`rules`: a runner document and its ledger head -> a delta or
an anomaly), the source reads (`source`), a usage group priced into lines (`lines`), the
append-only ledger (`ledger`), runner progress and dirty marks (`progress`), the anomaly log
(`anomalies`), and the same pipeline in memory (`memory_meter`).

May import: `chores.core`, `pricing`.
"""
