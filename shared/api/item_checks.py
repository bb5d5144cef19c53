"""The shapes of input items and function tools, checked at the door (both APIs).

What the service and the executor later read from an item (a message's role and content, its text parts, a
function call's id, name and arguments, a tool's schema) has the type OpenAI's Responses API gives it, or the
request is a 400 naming the field (`input[2].content[0].text`), before anything is written. Item and part types
the service does not read are left to the provider, as OpenAI's own API would judge them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import invalid as bad_request

ROLES = ("user", "assistant", "system", "developer")
# Content parts whose text the service reads: the field that holds it.
_TEXT_FIELD = {"input_text": "text", "output_text": "text", "text": "text", "refusal": "refusal"}
# Optional string fields of the other content parts.
_PART_STRINGS = {
    "input_image": ("image_url", "file_id", "detail"),
    "input_file": ("file_id", "filename", "file_data", "file_url"),
}


def check_input_items(items: list[Any]) -> None:
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type") if isinstance(item, dict) else None
        if isinstance(item, dict) and kind is None and "role" in item:
            kind = "message"  # an "easy" message: {"role", "content"}
        if not isinstance(kind, str):
            raise bad_request(f"'{where}' must be an object with a 'type' or 'role'.", param=where)
        _optional_strings(item, where, ("id", "status"))
        check = _ITEM_CHECKS.get(kind)
        if check is not None:
            check(item, where)


def check_function_tool(tool: dict[str, Any], where: str) -> None:
    """A function tool as OpenAI defines it: `name` a non-empty string, `description` a string, `parameters` a
    JSON schema object, `strict` a boolean (each but the name may be null or absent)."""
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(
            f"'{where}.name' is required for a function tool and must be a string.", param=f"{where}.name"
        )
    _optional_strings(tool, where, ("description",))
    if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
        raise bad_request(f"'{where}.parameters' must be a JSON schema object.", param=f"{where}.parameters")
    if tool.get("strict") is not None and not isinstance(tool["strict"], bool):
        raise bad_request(f"'{where}.strict' must be true or false.", param=f"{where}.strict")


# -- items -------------------------------------------------------------------------------------------------------
def _message(item: dict[str, Any], where: str) -> None:
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise bad_request(f"'{where}.role' must be one of {', '.join(ROLES)}.", param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or a list of content parts.", param=f"{where}.content")
    _content_parts(content, f"{where}.content")


def _function_call(item: dict[str, Any], where: str) -> None:
    _required_strings(item, where, ("call_id", "name", "arguments"))


def _function_call_output(item: dict[str, Any], where: str) -> None:
    _required_strings(item, where, ("call_id",))
    output = item.get("output")
    if isinstance(output, list):
        _content_parts(output, f"{where}.output")
    elif not isinstance(output, str):
        raise bad_request(f"'{where}.output' must be a string or a list of content parts.", param=f"{where}.output")


def _item_reference(item: dict[str, Any], where: str) -> None:
    _required_strings(item, where, ("id",))


_ITEM_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "message": _message,
    "function_call": _function_call,
    "function_call_output": _function_call_output,
    "item_reference": _item_reference,
}


def _content_parts(parts: list[Any], where: str) -> None:
    for index, part in enumerate(parts):
        at = f"{where}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"'{at}' must be a content part: an object with a 'type'.", param=at)
        field = _TEXT_FIELD.get(part["type"])
        if field is not None and not isinstance(part.get(field), str):
            raise bad_request(f"'{at}.{field}' must be a string.", param=f"{at}.{field}")
        _optional_strings(part, at, _PART_STRINGS.get(part["type"], ()))


# -- fields ------------------------------------------------------------------------------------------------------
def _required_strings(item: dict[str, Any], where: str, names: tuple[str, ...]) -> None:
    for name in names:
        if not isinstance(item.get(name), str):
            raise bad_request(f"'{where}.{name}' is required and must be a string.", param=f"{where}.{name}")


def _optional_strings(item: dict[str, Any], where: str, names: tuple[str, ...]) -> None:
    for name in names:
        if item.get(name) is not None and not isinstance(item[name], str):
            raise bad_request(f"'{where}.{name}' must be a string.", param=f"{where}.{name}")
