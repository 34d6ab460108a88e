"""The registry file format: reading a YAML or JSON file into a validated `Registry`, reporting
every problem as a `RegistryError` that points into the file, and writing a `Registry` back as
YAML.

The only I/O of the package is `load_registry` reading one file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Hashable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError

from ._errors import RegistryError
from ._models import RULE_ERROR, ModelEntry, PriceVersion, Registry, rate_text, shown

SHIPPED_REGISTRY_PATH: Final = Path(__file__).with_name("registry.yaml")
"""The registry shipped with the package, used when no other path is configured."""

_MAX_REPORTED = 5
# A registry of every model LiteLLM prices is about 0.5 MB (YAML) or 0.9 MB (JSON); a file many
# times that is a mistake, and reading it whole would take minutes and gigabytes.
MAX_REGISTRY_BYTES: Final = 4 * 1024 * 1024


class _DuplicateKey(ValueError):
    pass


class _RegistryLoader(yaml.SafeLoader):
    """SafeLoader that reads floats as exact Decimals, integers only when written in decimal
    (`_construct_int`), and refuses a key given twice (a key
    written over one merged in with `<<` is not given twice: overriding is what `<<` is for)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        self._refuse_keys_given_twice(node, deep)
        return super().construct_mapping(node, deep=deep)

    def _refuse_keys_given_twice(self, node: yaml.MappingNode, deep: bool) -> None:
        """Within one mapping as written, and within each mapping it merges in; each node
        once (a mapping merged in through aliases at every level of a few hundred bytes is
        otherwise checked billions of times)."""
        # The nodes themselves (compared by identity), kept alive: never an id reused.
        checked: set[yaml.Node] = self.__dict__.setdefault("_checked_nodes", set())
        if node in checked:
            return
        checked.add(node)
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for mapping in merged:
                    if isinstance(mapping, yaml.MappingNode):
                        self._refuse_keys_given_twice(mapping, deep)
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # as PyYAML's own mappings refuse one
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a key must be a plain value, not a list or mapping",
                    key_node.start_mark,
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)


class _NotDecimal(ValueError):
    pass


# YAML 1.1 (PyYAML) reads an unquoted `010` as octal 8, `0x10` as 16, `0b10` as 2, and
# `1:30` as 90 (base 60): a rate written so would be billed at a number nobody wrote.
_DECIMAL_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)")


def _not_decimal(text: str, node: yaml.ScalarNode) -> _NotDecimal:
    return _NotDecimal(
        f"{text!r} at line {node.start_mark.line + 1} is not a decimal number (YAML would read"
        " it as octal, hexadecimal, binary or base 60): write it in decimal, quoted"
    )


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if not _DECIMAL_INT.fullmatch(text):
        raise _not_decimal(text, node)
    return int(text.replace("_", ""))


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal | float:
    text = str(loader.construct_scalar(node))
    if ":" in text:
        raise _not_decimal(text, node)
    try:
        return Decimal(text.replace("_", ""))
    except InvalidOperation:
        return loader.construct_yaml_float(node)  # .inf, .nan: refused later with the field named


_RegistryLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_RegistryLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def _parse_yaml(text: str, file: Path) -> object:
    try:
        return yaml.load(text, Loader=_RegistryLoader)  # safe: a SafeLoader subclass
    except ValueError as exc:  # an integer of more digits than Python converts
        raise RegistryError(
            f"The model registry {file} holds a value it cannot read: {_first_clause(exc)}. "
            "Fix the value and load it again."
        ) from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise RegistryError(
            f"The model registry {file} is not valid YAML: {problem}{where}. Fix the syntax and "
            "load it again."
        ) from exc


def _first_clause(exc: ValueError) -> str:
    """An error's message without Python's advice to the programmer (after a `;`)."""
    return str(exc).split(";")[0]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"key {key!r} is given twice")
        result[key] = value
    return result


def _parse_json(text: str, file: Path) -> object:
    try:
        return json.loads(text, parse_float=Decimal, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        problem = f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    except ValueError as exc:  # a key given twice, an integer of too many digits
        problem = _first_clause(exc)
    raise RegistryError(
        f"The model registry {file} is not valid JSON: {problem}. Fix the syntax and load it again."
    )


_PARSERS: Final[dict[str, Callable[[str, Path], object]]] = {
    ".yaml": _parse_yaml,
    ".yml": _parse_yaml,
    ".json": _parse_json,
}


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    """The registry in the YAML (.yaml, .yml) or JSON (.json) file at `path`.

    None loads the registry shipped with the package. Any problem (unknown suffix, unreadable
    file, bad syntax, a broken rule) raises RegistryError naming the file, and for a broken rule
    the model id and the field.
    """
    file = SHIPPED_REGISTRY_PATH if path is None else Path(path)
    parse = _PARSERS.get(file.suffix.lower())
    if parse is None:
        raise RegistryError(
            f"Cannot load the model registry {file}: unknown file type {file.suffix or '(none)'!r}."
            " Use a .yaml, .yml or .json file."
        )
    try:
        size = file.stat().st_size
        if size > MAX_REGISTRY_BYTES:
            raise RegistryError(
                f"Cannot load the model registry {file}: it is {size:,} bytes, more than "
                f"the {MAX_REGISTRY_BYTES:,} a registry may be. Check the path."
            )
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(
            f"Cannot read the model registry {file}: {exc.strerror or exc}. Check the registry "
            "path setting and the file's permissions."
        ) from exc
    except UnicodeDecodeError as exc:
        raise RegistryError(
            f"Cannot read the model registry {file}: it is not UTF-8 text ({exc.reason}). Save it "
            "as UTF-8."
        ) from exc
    try:
        return validate_registry(parse(text, file), source=str(file))
    except RecursionError:
        raise RegistryError(
            f"Invalid model registry {file}: its lists or mappings are nested too deeply to "
            "be a registry. See pricing/registry.yaml for the format."
        ) from None


# --- validating -------------------------------------------------------------------------------


def validate_registry(data: object, *, source: str) -> Registry:
    """`data` (a parsed file) as a Registry, or a RegistryError that points into `source`."""
    if not isinstance(data, Mapping):
        raise RegistryError(
            f"Invalid model registry {source}: the top level must be a mapping with a 'version' "
            f"string and a 'models' list, got {type(data).__name__}. See pricing/registry.yaml "
            "for the format."
        )
    try:
        return Registry.model_validate(dict(data))
    except ValidationError as exc:
        raise RegistryError(_describe(exc, data, source)) from exc


def _describe(exc: ValidationError, data: Mapping[Any, Any], source: str) -> str:
    problems = [_one_problem(error, data) for error in exc.errors(include_url=False)]
    text = "; ".join(problems[:_MAX_REPORTED])
    if len(problems) > _MAX_REPORTED:
        text += f"; and {len(problems) - _MAX_REPORTED} more"
    what = "the entry" if len(problems) == 1 else "these entries"
    return (
        f"Invalid model registry {source}: {text}. Fix {what} in {source} and load it again "
        '(rates are USD per 1,000,000 tokens written as decimal strings like "0.15", dates as '
        '"YYYY-MM-DD").'
    )


def _one_problem(error: Any, data: Mapping[Any, Any]) -> str:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    context: dict[str, Any] = error.get("ctx") or {}
    reason = context["reason"] if error["type"] == RULE_ERROR else _reason(error, loc)
    model: int | None = context.get("model_index")
    rest = loc
    if model is None and len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        model, rest = loc[1], loc[2:]
    field = context.get("field") or _path(rest)
    if model is None:
        return f"field '{field or 'top level'}': {reason}"
    where = f"model {_model_label(data, model)}"
    return f"{where}, field '{field}': {reason}" if field else f"{where}: {reason}"


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _model_label(data: Mapping[Any, Any], position: int) -> str:
    models = data.get("models")
    entry = None
    if isinstance(models, list | tuple) and position < len(models):
        entry = models[position]
    model_id = entry.get("id") if isinstance(entry, Mapping) else None
    if isinstance(model_id, str) and model_id.strip():
        return f"{model_id!r} (models[{position}])"
    return f"models[{position}] (no valid id)"


def _reason(error: Any, loc: tuple[int | str, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key {loc[-1]!r} (a typo?); allowed keys: {', '.join(_allowed(loc))}"
    if kind == "missing":
        return "this required key is missing"
    return f"{error['msg']}, got {shown(error.get('input'))}"


def _allowed(loc: tuple[int | str, ...]) -> list[str]:
    if len(loc) == 1:
        owner: type[BaseModel] = Registry
    elif len(loc) == 3:
        owner = ModelEntry
    else:
        owner = PriceVersion
    return list(owner.model_fields)


# --- writing -----------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9._/-]*")
_ONE_LINE = 1 << 30


def _scalar(text: str) -> str:
    """`text` as a YAML scalar: plain when YAML reads it back as the same string, else quoted."""
    if _PLAIN.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    return _quoted(text)


def _quoted(text: str) -> str:
    """`text` as a double-quoted YAML scalar on one line, escaped by YAML's own rules."""
    dumped = yaml.safe_dump(text, default_style='"', allow_unicode=True, width=_ONE_LINE)
    return dumped.rstrip("\n").removesuffix("\n...")


def registry_to_yaml(registry: Registry) -> str:
    """`registry` in the file format `load_registry` reads (rates as decimal strings)."""
    lines = [
        "# Model price registry: rates in USD per 1,000,000 tokens; valid_from is a UTC date.",
        f"version: {_quoted(registry.version)}",
        "models:",
    ]
    for model in registry.models:
        lines.append(f"- id: {_scalar(model.id)}")
        if model.aliases:
            lines.append(f"  aliases: [{', '.join(_scalar(alias) for alias in model.aliases)}]")
        lines.append(f"  tier: {model.tier}")
        lines.append("  prices:")
        for price in model.prices:
            lines.append(f'  - valid_from: "{price.valid_from.isoformat()}"')
            lines.append(f'    input: "{rate_text(price.input)}"')
            if price.cached_input is not None:
                lines.append(f'    cached_input: "{rate_text(price.cached_input)}"')
            lines.append(f'    output: "{rate_text(price.output)}"')
    return "\n".join(lines) + "\n"


def registry_to_json(registry: Registry) -> str:
    """`registry` as a `.json` registry file, the shape of the YAML one (rates as decimal
    strings, so that no rate goes through a binary float)."""
    models = []
    for model in registry.models:
        entry: dict[str, object] = {"id": model.id}
        if model.aliases:
            entry["aliases"] = list(model.aliases)
        entry["tier"] = model.tier
        prices = []
        for price in model.prices:
            rates = {"valid_from": price.valid_from.isoformat(), "input": rate_text(price.input)}
            if price.cached_input is not None:
                rates["cached_input"] = rate_text(price.cached_input)
            rates["output"] = rate_text(price.output)
            prices.append(rates)
        entry["prices"] = prices
        models.append(entry)
    return json.dumps({"version": registry.version, "models": models}, indent=2) + "\n"
