"""Every error a user of the chore can cause, in one place.

    ChoreError                  base: the CLI prints its message on one line and exits 1
    ├── ConfigError             a setting is missing or malformed (bad MONGO_URL, bad plan value)
    ├── DatabaseUnavailable     the MongoDB server cannot be reached
    │   └── CredentialsRefused  ...or it refuses the user or password of MONGO_URL
    ├── LockUnavailable         an org's metering lock cannot be taken (its Redis is unreachable)
    ├── UnknownOrg              an org has no billing data at all
    ├── InvoiceNotFound         no invoice for that org and period
    ├── InvoiceOutOfDate        the ledger of a period holds usage its invoice does not (rerun)
    ├── InvoiceTooLarge         an invoice would hold a number past what MongoDB stores
    ├── MalformedDocument       a billing document is not as the chore writes it (a hand edit)
    └── SourceIsReadOnly        code tried to write to the platform's tasks/findings

Registry errors are `pricing.RegistryError` (the pricing package stays independent).
"""

from __future__ import annotations


class ChoreError(Exception):
    """A user-facing error: its message says what went wrong and what to do."""


class ConfigError(ChoreError):
    """A setting or argument is malformed."""


class DatabaseUnavailable(ChoreError):
    """The database cannot be reached; the message never contains credentials."""


class CredentialsRefused(DatabaseUnavailable):
    """The database was reached and refused the user or password of its URL: no retry
    fixes that (a worker stops at start); where the database is unavailable to a caller
    all the same (a quota check's policy), it is one."""


class LockUnavailable(ChoreError):
    """The Redis of the per-org lock cannot be reached: the org is not metered without it
    (a worker's task retries); the message never contains credentials."""


class UnknownOrg(ChoreError):
    """The org has no billing documents."""


class InvoiceNotFound(ChoreError):
    """No invoice exists for the org and period asked for."""


class InvoiceOutOfDate(ChoreError):
    """The ledger of a period holds usage its stored invoice does not show (yet)."""


class InvoiceTooLarge(ChoreError):
    """An invoice would hold a number past the 64 bits MongoDB stores (a sum of tokens or
    micro-dollars): it is not written, its usage stays in the ledger, and the run says so
    once every other invoice is written."""


class MalformedDocument(ChoreError):
    """A document of the chore's own collections is not as the chore writes it (edited by
    hand): nothing is billed or shown from it."""


class IndexesNotCreated(ChoreError):
    """The server refused to create some of the chore's indexes (the others were created):
    the message names each and why."""


class ForeignUniqueIndex(ChoreError):
    """A unique index that is not the chore's refused a document whose `_id` is not stored:
    nothing of it was written (a duplicate `_id` is an answer, "written already"; this is
    not), and the message says which collection and index to look at."""


class SourceIsReadOnly(ChoreError):
    """The chore only reads the platform's collections."""
