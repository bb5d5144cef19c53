"""Strict, bounded JSON for every body the service takes in (both APIs, sessions, the provider's webhooks).

`json.loads` accepts more than JSON and more than the service can keep: `NaN` and `Infinity` (which no other
parser reads back), numbers too large for a float (1e400 becomes infinity), duplicate keys (the last one wins
silently), UTF-16/32 bodies and a byte order mark, lone surrogates (`"\\ud800"`: a Python str that cannot be
encoded, so storage fails later with UnicodeEncodeError), and nesting as deep as the interpreter's recursion
limit (a RecursionError near 1,000 levels, and every later step that walks the value recurses too).

`loads` refuses each of these with JsonRefused, whose `param` names where it is (`input[0].content[1].text`,
the top-level field for nesting too deep). The nesting is measured before parsing, in one linear pass over the
text that needs no recursion; the rest is noted while parsing and located by one walk of the parsed value,
which runs only when something was noted (or the text escapes a surrogate), so a clean body costs the C
parser's time and little more.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64  # levels of objects and arrays, the body itself being the first

# Everything but the brackets outside strings: what a sub() with "" leaves is the body's bracket structure.
_NOT_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+', re.S)
# A string token followed by a colon is an object key; brackets open and close levels.
_TOKEN = re.compile(r'("[^"\\]*(?:\\.[^"\\]*)*")\s*:|"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BOM = b"\xef\xbb\xbf"


class JsonRefused(ValueError):
    """The body is not JSON this service accepts; `param` names the field at fault (None: the body)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _NotAFiniteNumber:
    """What NaN, Infinity and -Infinity parse to, so that the walk can say where they were."""

    def __init__(self, text: str) -> None:
        self.text = text


class _DuplicateKeys(dict[str, Any]):
    """An object in which a key appeared more than once."""

    duplicate: str = ""


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of `raw` (UTF-8), or JsonRefused saying what is wrong and where."""
    text = _text(raw)
    _check_depth(text, max_depth)
    noted: list[bool] = []

    def constant(name: str) -> _NotAFiniteNumber:
        noted.append(True)
        return _NotAFiniteNumber(name)

    def number(literal: str) -> float | _NotAFiniteNumber:
        value = float(literal)
        return value if math.isfinite(value) else constant(literal)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        value = dict(items)
        if len(value) == len(items):
            return value
        noted.append(True)
        marked = _DuplicateKeys(value)
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                marked.duplicate = key
                break
            seen.add(key)
        return marked

    try:
        value = json.loads(text, parse_constant=constant, parse_float=number, object_pairs_hook=pairs)
    except RecursionError:  # not reached below MAX_DEPTH; kept so that no input can turn into a 500
        raise JsonRefused(f"The body is nested deeper than {max_depth} levels.") from None
    except ValueError as error:  # JSONDecodeError, and Python's limit of 4,300 digits for an integer
        raise JsonRefused(f"The body is not valid JSON: {error}") from None
    if noted or _SURROGATE_ESCAPE.search(text):
        _check_values(value)
    return value


def path_of(parts: list[str | int]) -> str | None:
    """`input[0].content[1].text` for ["input", 0, "content", 1, "text"]; None for the body itself."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{_printable(part)}" if out else _printable(part))
    return out or None


def _printable(text: str) -> str:
    """`text` safe to put in an answer: a lone surrogate shown as its escape (it cannot be encoded)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text(raw: bytes) -> str:
    if raw.startswith(_BOM):
        raise JsonRefused("The body starts with a byte order mark; send UTF-8 JSON without one.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonRefused(
            f"The body is not UTF-8: byte {error.start} ({raw[error.start : error.start + 1]!r}) "
            "cannot start or continue a character."
        ) from None


def _check_depth(text: str, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth`, measured on the text: strings removed (a bracket in a string is
    text), then a running sum over the brackets left. Linear, and no recursion whatever the input."""
    if text.count("[") + text.count("{") <= max_depth:  # most bodies: cannot be deeper than that
        return
    brackets = _NOT_STRUCTURE.sub("", text)
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) <= max_depth:
        return
    raise JsonRefused(
        f"The body is nested deeper than {max_depth} levels (objects and arrays).", _field_too_deep(text, max_depth)
    )


def _field_too_deep(text: str, max_depth: int) -> str | None:
    """The top-level field in which the nesting passes `max_depth` (only on the way to a refusal)."""
    depth, field = 0, None
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if match.group(1) is not None:  # a key
            if depth == 1:
                try:
                    field = json.loads(match.group(1))
                except ValueError:
                    field = None
        elif token in "[{":
            depth += 1
            if depth > max_depth:
                return _printable(field) if isinstance(field, str) else None
        elif token in "]}":
            depth -= 1
    return None


def _check_values(value: Any) -> None:
    """Find what parsing noted (NaN, Infinity, an infinite number, a duplicate key) and any lone surrogate, with
    its path. An explicit stack: the depth is bounded already, but nothing here recurses anyway."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _NotAFiniteNumber):
            raise JsonRefused(
                f"{item.text} is not a finite number; JSON numbers must be finite "
                f"(at '{path_of(path) or 'the body'}').",
                path_of(path),
            )
        if isinstance(item, str):
            _check_string(item, path)
        elif isinstance(item, dict):
            if isinstance(item, _DuplicateKeys):
                where = path_of(path + [item.duplicate])
                raise JsonRefused(
                    f"The key '{_printable(item.duplicate)}' appears more than once in one object (at '{where}').",
                    where,
                )
            for key, child in item.items():
                _check_string(key, path + [key], key=True)
                stack.append((child, path + [key]))
        elif isinstance(item, list):
            stack.extend((child, path + [index]) for index, child in enumerate(item))


def _check_string(text: str, path: list[str | int], *, key: bool = False) -> None:
    if _SURROGATE.search(text):
        what = "key" if key else "string"
        raise JsonRefused(
            f"A {what} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is "
            f"not text (at '{path_of(path) or 'the body'}').",
            path_of(path),
        )
