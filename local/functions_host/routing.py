"""ASP.NET-style route templates as the Functions host uses them: `runs/{run_id}`, `{id:int}`, `{id?}`,
`{id=default}`, `{*rest}`. Literal segments match case-insensitively; more specific routes win."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from .errors import StartupError


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _is_datetime(v: str) -> bool:
    try:
        datetime.fromisoformat(v)
        return True
    except ValueError:
        return False


def _is_guid(v: str) -> bool:
    try:
        uuid.UUID(v)
        return True
    except ValueError:
        return False


def _constraint_check(kind: str, arg: str | None):
    simple = {
        "int": lambda v: re.fullmatch(r"-?\d+", v) is not None and -(2**31) <= int(v) < 2**31,
        "long": lambda v: re.fullmatch(r"-?\d+", v) is not None and -(2**63) <= int(v) < 2**63,
        "bool": lambda v: v.lower() in ("true", "false"),
        "alpha": lambda v: re.fullmatch(r"[A-Za-z]+", v) is not None,
        "guid": _is_guid,
        "double": _is_float,
        "float": _is_float,
        "decimal": _is_float,
        "datetime": _is_datetime,
    }
    if kind in simple and arg is None:
        return simple[kind]
    if arg is not None:
        if kind == "regex":
            rx = re.compile(arg.replace("{{", "{").replace("}}", "}"), re.IGNORECASE)
            return lambda v: rx.search(v) is not None
        nums = [a.strip() for a in arg.split(",")]
        try:
            n = [int(x) for x in nums]
        except ValueError:
            n = []
        if kind == "minlength" and len(n) == 1:
            return lambda v: len(v) >= n[0]
        if kind == "maxlength" and len(n) == 1:
            return lambda v: len(v) <= n[0]
        if kind == "length" and len(n) in (1, 2):
            return (lambda v: len(v) == n[0]) if len(n) == 1 else (lambda v: n[0] <= len(v) <= n[1])
        if kind in ("min", "max", "range") and n:
            lo, hi = {"min": (n[0], None), "max": (None, n[0]), "range": (n[0], n[-1])}[kind]
            return lambda v: (
                re.fullmatch(r"-?\d+", v) is not None and (lo is None or int(v) >= lo) and (hi is None or int(v) <= hi)
            )
    return None


@dataclass
class _Param:
    name: str
    constraints: list = field(default_factory=list)
    optional: bool = False
    default: str | None = None
    catch_all: bool = False


def _split_params(segment: str, template: str) -> list[str | _Param]:
    """A segment -> literal strings and parameters (handles braces inside regex constraints)."""
    parts: list[str | _Param] = []
    i = 0
    literal = ""
    while i < len(segment):
        ch = segment[i]
        if ch == "{":
            if segment.startswith("{{", i):
                literal += "{"
                i += 2
                continue
            depth, j = 0, i
            while j < len(segment):
                if segment[j] == "{":
                    depth += 1
                elif segment[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= len(segment):
                raise StartupError(f"route template {template!r}: unbalanced '{{'")
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(_parse_param(segment[i + 1 : j], template))
            i = j + 1
        elif ch == "}":
            if segment.startswith("}}", i):
                literal += "}"
                i += 2
                continue
            raise StartupError(f"route template {template!r}: unbalanced '}}'")
        else:
            literal += ch
            i += 1
    if literal:
        parts.append(literal)
    return parts


def _parse_param(body: str, template: str) -> _Param:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    default = None
    # name[:constraint[(arg)]]...[?|=default]
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)", body)
    if not m:
        raise StartupError(f"route template {template!r}: invalid parameter {{{body}}}")
    name = m.group(1)
    rest = body[m.end() :]
    optional = False
    if rest.endswith("?"):
        optional = True
        rest = rest[:-1]
    eq = None
    depth = 0
    for idx, ch in enumerate(rest):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "=" and depth == 0:
            eq = idx
            break
    if eq is not None:
        default = rest[eq + 1 :]
        rest = rest[:eq]
        optional = True
    constraints = []
    while rest:
        cm = re.match(r"^:([A-Za-z]+)(?:\((.*?)\))?(?=:[A-Za-z]|$)", rest)
        if not cm:
            raise StartupError(f"route template {template!r}: invalid constraint in {{{body}}}")
        check = _constraint_check(cm.group(1).lower(), cm.group(2))
        if check is None:
            raise StartupError(f"route template {template!r}: unsupported constraint {cm.group(0)[1:]!r}")
        constraints.append(check)
        rest = rest[cm.end() :]
    return _Param(name=name, constraints=constraints, optional=optional, default=default, catch_all=catch_all)


@dataclass
class CompiledRoute:
    template: str
    regex: re.Pattern
    params: list[_Param]
    sort_key: tuple

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(path)
        if not m:
            return None
        values: dict[str, str] = {}
        for i, p in enumerate(self.params):
            v = m.group(f"p{i}")
            if v is None or v == "":
                if p.default is not None:
                    values[p.name] = p.default
                elif p.catch_all or p.optional:
                    continue
                else:
                    return None
            else:
                if not all(check(v) for check in p.constraints):
                    return None
                values[p.name] = v
        return values


def compile_route(template: str) -> CompiledRoute:
    clean = template.strip().strip("/")
    segments = clean.split("/") if clean else []
    regex = ""
    params: list[_Param] = []
    key: list[int] = []
    for s_index, segment in enumerate(segments):
        if segment == "":
            raise StartupError(f"route template {template!r}: empty segment")
        parts = _split_params(segment, template)
        is_last = s_index == len(segments) - 1
        seg_rx = ""
        rank = 0
        only_optional = len(parts) == 1 and isinstance(parts[0], _Param) and (parts[0].optional or parts[0].catch_all)
        for part in parts:
            if isinstance(part, str):
                seg_rx += re.escape(part)
                continue
            if part.catch_all and not is_last:
                raise StartupError(f"route template {template!r}: a catch-all parameter must be last")
            group = f"p{len(params)}"
            params.append(part)
            if part.catch_all:
                seg_rx += f"(?P<{group}>.*)"
                rank = max(rank, 4)
            else:
                seg_rx += f"(?P<{group}>[^/]+?)" if len(parts) > 1 else f"(?P<{group}>[^/]+)"
                rank = max(rank, 3 if part.optional else (1 if part.constraints else 2))
        if only_optional and is_last:
            regex += f"(?:/{seg_rx})?" if regex else f"(?:{seg_rx})?"
        else:
            regex += ("/" if regex else "") + seg_rx
        key.append(rank)
    compiled = re.compile(regex, re.IGNORECASE | re.DOTALL)
    return CompiledRoute(template=template, regex=compiled, params=params, sort_key=tuple(key))
