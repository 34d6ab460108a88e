"""The chore's own documents, checked as they are read.

A document of a billing collection edited by hand out of the shape the chore writes (a
field removed, a count written as text, a status it never writes) is a `MalformedDocument`
naming the collection, the document and the field, raised where it is read: never a
traceback from deep in a report, nor a sum that silently skips it. The chore does not
guess what such a document should hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, Strict, TypeAdapter, ValidationError

from chores.core.exceptions import MalformedDocument
from chores.core.periods import is_period

Model = TypeVar("Model", bound=BaseModel)

# The values of a document's shape (a TypedDict), exactly as the chore writes them: never
# converted ("12" is no count), since its readers go on with the document itself.
Integer = Annotated[int, Strict()]  # a count or an amount: a late credit may be below 0
Text = Annotated[str, Strict()]
Flag = Annotated[bool, Strict()]
Moment = Annotated[datetime, Strict()]
Number = Annotated[float, Strict()]  # an int too, never a bool or text


def _a_day(text: str) -> str:
    date.fromisoformat(text)  # ValueError: not a day
    return text


def _a_period(text: str) -> str:
    if not is_period(text):
        raise ValueError("not a period (YYYY-MM)")
    return text


def _an_amount(text: str) -> str:
    """An exact amount as the chore writes one: an integer count of tokens times a rate of
    at most 30 decimal places, far from Decimal's limits ("1E+1000000" is none)."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError("not a decimal amount") from None
    exponent = number.as_tuple().exponent  # "n", "N" or "F" when not finite
    if not isinstance(exponent, int) or exponent < -60 or number.adjusted() > 40:
        raise ValueError("not a decimal amount")
    return text


Day = Annotated[Text, AfterValidator(_a_day)]  # 2026-11-30
DecimalText = Annotated[Text, AfterValidator(_an_amount)]  # an exact amount: "12402.4"
Period = Annotated[Text, AfterValidator(_a_period)]  # 2026-11

SHOWN_PROBLEMS = 3  # a document with more says how many more
RESTORE = "restore it as it was"


def checked(
    model: type[Model], doc: Mapping[str, Any], *, collection: str, remedy: str = RESTORE
) -> Model:
    """`doc`, read from `collection`, as `model`; `MalformedDocument` if it is not one
    (strictly: a count written as text is no count, here as in a sum)."""
    try:
        return model.model_validate(doc, strict=True)
    except ValidationError as exc:
        raise malformed(collection, doc.get("_id"), exc, remedy) from None


def check_shape(
    shape: TypeAdapter[Any], doc: Mapping[str, Any], *, collection: str, remedy: str = RESTORE
) -> None:
    """Refuse `doc`, read from `collection`, unless `shape` (a TypedDict's adapter) holds
    for it: for readers that go on with the plain document."""
    try:
        shape.validate_python(doc)
    except ValidationError as exc:
        raise malformed(collection, doc.get("_id"), exc, remedy) from None


def holds(shape: TypeAdapter[Any], doc: Mapping[str, Any]) -> bool:
    """Whether `shape` holds for `doc` (a row a reader derives, not a stored document)."""
    try:
        shape.validate_python(doc)
    except ValidationError:
        return False
    return True


def invoice_remedy(doc: Mapping[str, Any]) -> str:
    """What to do about a malformed invoice: a draft is derived from its ledger, and a
    full run rebuilds it once removed; a final holds what was frozen."""
    org = doc.get("org")
    if not isinstance(org, str):  # its id is "<org>:<period>"
        org = str(doc.get("_id")).rpartition(":")[0]
    if doc.get("status") == "draft" and org:
        return (
            f"`chore run --full --org {org}` rebuilds the draft from its ledger (remove it "
            "first if that run names it too)"
        )
    return RESTORE


def invoice_sum_problems(doc: Mapping[str, Any]) -> list[str]:
    """Where an invoice of the chore's shape disagrees with its own lines (`lines`, each
    with `priced`, `tokens` and `amount_micros`): its `total_micros` is the sum of its
    priced lines, its `unpriced_tokens` the tokens of the others, as every build writes
    them. A reader that goes on with the total (a quota decision, a view) refuses such an
    invoice; `chore reconcile` lists it."""
    lines = doc["lines"]
    said = []
    priced = sum(line["amount_micros"] for line in lines if line["amount_micros"] is not None)
    if doc["total_micros"] != priced:
        said.append(f"total_micros {doc['total_micros']:,} is not the sum of its lines, {priced:,}")
    unpriced = sum(line["tokens"] for line in lines if not line["priced"])
    if doc["unpriced_tokens"] != unpriced:
        said.append(
            f"unpriced_tokens {doc['unpriced_tokens']:,} is not what its unpriced lines "
            f"hold, {unpriced:,}"
        )
    return said


def malformed(
    collection: str, doc_id: object, exc: ValidationError, remedy: str = RESTORE
) -> MalformedDocument:
    """The error for a document of `collection` that failed its shape: its first problems,
    each as `field: what is wrong (got value)`, and what to do (`remedy`), on one line."""
    return not_as_written(collection, doc_id, problems(exc), remedy)


def not_as_written(
    collection: str, doc_id: object, said: str, remedy: str = RESTORE
) -> MalformedDocument:
    """The error for a document of `collection` that is not as the chore writes it, `said`
    saying where, and what to do (`remedy`), on one line."""
    return MalformedDocument(
        f"the {collection} document {str(doc_id)!r:.80} is not as the chore writes it "
        f"({said}): was it edited by hand? The chore reads nothing from it until "
        f"then: {remedy}"
    )


def problems(exc: ValidationError) -> str:
    """A document's first problems, each as `field: what is wrong (got value)`."""
    said = [_problem(error) for error in exc.errors()]
    more = len(said) - SHOWN_PROBLEMS
    return "; ".join(said[:SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")


def _problem(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(document)"
    if error["type"] == "missing":
        return f"{field}: missing"
    said = str(error["msg"]).removeprefix("Value error, ")
    return f"{field}: {said} (got {error.get('input')!r:.40})"


INT64 = range(-(2**63), 2**63)  # the integers a BSON document stores


def past_int64(value: Any, path: str = "") -> tuple[str, int] | None:
    """The first integer of a document about to be written that lies past the 64 bits
    MongoDB stores (pymongo would refuse the whole write with an OverflowError): its dotted
    path and value. None when every one fits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value in INT64 else (path or "(the value)", value)
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = past_int64(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None
