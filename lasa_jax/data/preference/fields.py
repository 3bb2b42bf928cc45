"""Checked fields of one preference-file record: each reader returns the field's value or raises an `InputError`
naming `where` (the file and record) and the field."""
from __future__ import annotations

from collections.abc import Mapping

from lasa_jax.data.languages import normalize_language
from lasa_jax.infra.errors import InputError
from lasa_jax.models.chat import Prompt, chat_messages


def string_field(record: Mapping, field: str, where: str, required: bool = True) -> str:
    """A string field (non-empty when required; "" when absent and not required); "source" is stripped."""
    value = record.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InputError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
    return value.strip() if field == "source" else value


def language_field(record: Mapping, where: str) -> str:
    """Optional "language": ISO 639-1 code via `normalize_language`; "" when absent or empty."""
    value = string_field(record, "language", where, required=False)
    if not value.strip():
        return ""
    try:
        return normalize_language(value)
    except ValueError as e:
        raise InputError(f"{where}: field 'language': {e}") from None


def prompt_field(record: Mapping, where: str) -> Prompt:
    """"prompt": a user string or a message list (`chat_messages`) whose last user message is not empty."""
    prompt = record.get("prompt")
    try:
        messages = chat_messages(prompt)
    except ValueError as e:
        raise InputError(f"{where}: field 'prompt': {e}") from None
    if not messages[-1]["content"].strip():
        raise InputError(f"{where}: field 'prompt' has an empty user message")
    return prompt if isinstance(prompt, str) else messages


def completion_field(record: Mapping, field: str, where: str) -> str:
    """A completion given as a string or as a one-message list [{"role": "assistant", "content": str}]."""
    value = record.get(field)
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], Mapping) or value[0].get("role") != "assistant":
            raise InputError(f"{where}: field {field!r} must be a string or a list of exactly one assistant "
                             f"message, got {value!r:.200}")
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field {field!r} must hold non-empty text, got {value!r:.200}")
    return value


def complete_field(record: Mapping, where: str) -> bool:
    """Optional "complete" (bool, default True)."""
    value = record.get("complete", True)
    if not isinstance(value, bool):
        raise InputError(f"{where}: field 'complete' must be true or false, got {value!r}")
    return value


def label_field(record: Mapping, where: str) -> bool:
    """"label": true/false, 1/0 or "desirable"/"undesirable" -> desirable."""
    label = record.get("label")
    if isinstance(label, bool):
        return label
    if isinstance(label, int) and label in (0, 1):
        return bool(label)
    if isinstance(label, str) and label.strip().lower() in ("desirable", "undesirable"):
        return label.strip().lower() == "desirable"
    raise InputError(f"{where}: field 'label' must be true/false, 1/0 or 'desirable'/'undesirable', got {label!r}")


def group_id_field(record: Mapping, where: str, default: str) -> str:
    """"group_id", else "id" (a non-empty string or an integer), as a string; `default` when neither is given."""
    for field in ("group_id", "id"):
        value = record.get(field)
        if value is not None:
            if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
                raise InputError(f"{where}: field {field!r} must be a non-empty string or an integer, got {value!r}")
            return str(value)
    return default


def binary_field(record: Mapping, field: str, where: str) -> int:
    """A 0/1 flag (booleans refused)."""
    value = record.get(field)
    if isinstance(value, bool) or value not in (0, 1):
        raise InputError(f"{where}: field {field!r} must be 0 or 1, got {value!r}")
    return int(value)

