"""JSON objects read in pydantic-core's parser, building only the members asked for: the rest of
the text is checked to be JSON and dropped unbuilt. A record's event type is so read in about a
sixth of decoding the whole event, and a timeline page checked to be an object in about a
quarter of `json.loads` (docs/decisions.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic_core import CoreSchema, SchemaValidator, core_schema


def object_reader(**members: CoreSchema) -> Callable[[bytes], dict[str, Any]]:
    """A reader of one JSON object that returns these members, each required and validated by
    its schema; it raises pydantic's ValidationError when the text is no JSON object or a member
    is missing or invalid. With no members it only checks the text is a JSON object."""
    fields = {name: core_schema.typed_dict_field(schema) for name, schema in members.items()}
    return SchemaValidator(
        core_schema.typed_dict_schema(fields, extra_behavior="ignore")
    ).validate_json
