"""One metering run (`chore`: source -> ledger -> invoices -> quota decisions, and the
finalize) and the report it returns (`report`).

May import: `chores.billing`, `chores.quota`, `chores.metering`, `chores.core`, `pricing`.
"""
