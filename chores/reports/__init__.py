"""Reports on what was billed: breakdowns (`breakdown`), cost allocation to runs
(`allocation`), run trees (`run_trees`), the HTML invoice report (`invoice_html`), and the
reconciliation of an invoice with its source (`reconcile`).

May import: `chores.run`, `chores.billing`, `chores.metering`, `chores.core`, `pricing`.
"""
