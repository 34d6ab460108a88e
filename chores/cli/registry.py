"""`chore registry`: list, validate and import the model price registry."""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import click
from rich.markup import escape

from chores.cli import tables
from chores.cli.common import (
    console,
    now_option,
    user_errors,
)
from chores.cli.output_files import write_output
from chores.cli.params import DayType, FilePathType, OneLineGroup
from chores.core.periods import as_utc
from chores.core.settings import get_settings
from chores.core.wording import counted, for_terminal
from pricing import (
    MAX_REGISTRY_BYTES,
    Registry,
    RegistryError,
    case_twin_keys,
    load_registry,
    not_imported_keys,
    off_peak_keys,
    rate_text,
    registry_from_litellm,
    registry_to_json,
    registry_to_yaml,
    zero_priced_keys,
)


# registry ------------------------------------------------------------------------
@click.group(cls=OneLineGroup)
def registry() -> None:
    """The model price registry."""


def _registry_path(path: str | None, option: str | None) -> str | Path | None:
    """`PATH` or `--path PATH` (both forms work for both commands), else REGISTRY_PATH
    (None: the shipped registry)."""
    if path and option and path != option:
        raise click.UsageError(f"give the registry path once: {path} or --path {option}")
    return path or option or get_settings().registry_path


registry_path_argument = click.argument("path", required=False, type=FilePathType())
registry_path_option = click.option(
    "--path",
    "path_option",
    type=FilePathType(),
    help="The registry file, as PATH (default: REGISTRY_PATH, else the shipped one).",
)


@registry.command("list")
@registry_path_argument
@registry_path_option
@now_option
@user_errors
def registry_list(path: str | None, path_option: str | None, now: datetime | None) -> None:
    """List models and their prices today (USD per million tokens).

    PATH is the registry file (default: REGISTRY_PATH, else the shipped one).
    """
    reg = load_registry(_registry_path(path, path_option))
    table = tables.table(f"Model registry {reg.version} ({counted(len(reg.models), 'model')})")
    tables.name_column(table, "model")
    tables.name_column(table, "tier", keep=True)
    tables.name_column(table, "valid from", keep=True)
    for column in ("input", "cached", "output"):
        tables.number_column(table, column)
    tables.text_column(table, "aliases")
    today = as_utc(now or datetime.now(UTC)).date()  # `valid_from` is a UTC day
    for model in sorted(reg.models, key=lambda m: (m.tier, m.id)):
        price = model.price_at(today)
        if price is None:  # priced only from a later day: its usage today is unpriced
            since, rates = f"from {model.prices[0].valid_from}", ["unpriced"] * 3
        else:
            since = price.valid_from.isoformat()
            rates = [rate_text(r) for r in (price.input, price.cached_rate, price.output)]
        table.add_row(escape(model.id), model.tier, since, *rates, escape(", ".join(model.aliases)))
    out = console()
    tables.show(out, table)
    out.print("input, cached, output: USD per million tokens")


@registry.command("validate")
@registry_path_argument
@registry_path_option
@user_errors
def registry_validate(path: str | None, path_option: str | None) -> None:
    """Check a registry file; says which model and field is wrong.

    PATH is the registry file (default: REGISTRY_PATH, else the shipped one).
    """
    chosen = _registry_path(path, path_option)
    reg = load_registry(chosen)
    models = counted(len(reg.models), "model")
    valid = f"{chosen or 'shipped registry'}: valid, version {reg.version}, {models}"
    click.echo(for_terminal(valid))


def _not_a_registry(path: Path) -> str | None:
    """Why `import-litellm --out` leaves an existing file alone: it is no registry (a
    compose file, say), which a mistyped path would lose."""
    try:
        load_registry(path)
    except RegistryError:
        return "exists and is not a model registry that loads: remove it to write one there"
    return None


WRITERS = {".yaml": registry_to_yaml, ".yml": registry_to_yaml, ".json": registry_to_json}
MAX_LITELLM_BYTES = 64 * 1024 * 1024


@registry.command("import-litellm")
@click.argument("path", type=FilePathType())
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Write here instead of stdout (as JSON if it ends in .json, else YAML).",
)
@click.option(
    "--valid-from",
    type=DayType(),
    default=None,
    help="Effective date of the prices (default: today, UTC).",
)
@click.option("--version", "version", default=None, help="Registry version (default: the date).")
@user_errors
def registry_import(
    path: str, out: str | None, valid_from: date | None, version: str | None
) -> None:
    """Convert LiteLLM's model_prices_and_context_window.json into a registry file."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_LITELLM_BYTES:  # LiteLLM's map is ~1.5 MB; this would take minutes
            raise click.ClickException(
                f"{path}: {size:,} bytes, more than the {MAX_LITELLM_BYTES:,} LiteLLM's "
                "price map could be: is it the right file?"
            )
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: not readable JSON ({exc})") from None
    except RecursionError:
        raise click.ClickException(
            f"{path}: its JSON is nested too deeply to be LiteLLM's prices"
        ) from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{path}: expected a JSON object of models")
    day = valid_from or datetime.now(UTC).date()
    try:
        reg = registry_from_litellm(data, valid_from=day, version=version or day.isoformat())
    except RegistryError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    suffix = Path(out).suffix.lower() if out else ".yaml"
    if suffix not in WRITERS:
        raise click.ClickException(
            f"--out {out}: a registry file ends in .yaml, .yml or .json (what it is loaded as)"
        )
    text = WRITERS[suffix](reg)
    if len(text.encode("utf-8")) > MAX_REGISTRY_BYTES:  # what `load_registry` would refuse
        raise click.ClickException(
            f"{path}: its registry would be {len(text.encode('utf-8')):,} bytes, more than the "
            f"{MAX_REGISTRY_BYTES:,} a registry may be: nothing written"
        )
    if out is not None:  # `--out ''` too: refused by `write_output`, not printed instead
        replaced = _loads(Path(out))
        write_output(out, text, keep=_not_a_registry)
        click.echo(f"wrote {counted(len(reg.models), 'model')} to {out}", err=True)
        if replaced is not None:
            _say_what_the_replaced_registry_priced_earlier(replaced, day)
    else:
        sys.stdout.write(text)
    left_out = {
        "LiteLLM prices at 0 outside the free providers": [
            key for key in zero_priced_keys(data) if reg.resolve(key) is None
        ],
        "LiteLLM does not price per input and output token as a registry needs (tiers or "
        "seconds only, a cost missing or out of range, a name another key already took)": (
            not_imported_keys(data, reg)
        ),
    }
    for why, keys in left_out.items():
        if keys:
            click.echo(
                f"left out {counted(len(keys), 'model')} {why} ({_examples(keys)}): their usage "
                "stays unpriced until a registry prices them",
                err=True,
            )
    off_peak = off_peak_keys(data, reg)
    if off_peak:
        click.echo(
            f"priced {counted(len(off_peak), 'model')} at their standard rates, though "
            f"LiteLLM also gives them cheaper off-peak rates by the hour ({_examples(off_peak)}):"
            " a registry's prices hold for whole days; their usage in those hours is billed "
            "above what LiteLLM computes",
            err=True,
        )
    twins = case_twin_keys(data, reg)
    if twins:
        pairs = [f"{key} as {kept}" for key, kept in twins.items()]
        click.echo(
            f"priced {counted(len(twins), 'model')} at the rates of a key spelled the same but "
            f"for case, though LiteLLM gives them others ({_examples(pairs)}): a registry "
            "resolves names ignoring case",
            err=True,
        )


def _loads(path: Path) -> Registry | None:
    """The registry at `path`, None when there is none that loads."""
    try:
        return load_registry(path) if path.is_file() else None
    except RegistryError:
        return None


def _say_what_the_replaced_registry_priced_earlier(replaced: Registry, day: date) -> None:
    """Outside review: `--out` over a working registry replaced it whole, so usage before
    the new `--valid-from` of every model it priced earlier became unpriced, unsaid."""
    earlier = sorted(
        model.id for model in replaced.models if model.prices and model.prices[0].valid_from < day
    )
    if earlier:
        click.echo(
            f"note: the registry replaced priced {counted(len(earlier), 'model')} before "
            f"{day} ({_examples(earlier)}): their usage before then is now unpriced (a run "
            "reprices the open months' drafts); give --valid-from their first date, or keep "
            "their earlier price versions by hand",
            err=True,
        )


def _examples(names: list[str]) -> str:
    """The first three names, for one line."""
    return for_terminal(", ".join(names[:3])) + (", ..." if len(names) > 3 else "")
