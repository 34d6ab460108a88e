"""Billing: invoice drafts folded from the ledger, finalized invoices (`invoices`), the
stored sums of a draft (`drafts`), and the read of one period's ledger (`period_ledger`).

May import: `chores.metering`, `chores.core`, `pricing`.
"""
