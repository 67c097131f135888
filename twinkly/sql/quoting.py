"""Quoting for the few SQL texts Twinkly writes itself (settings, catalog checks, the
sandbox's set-up): standard_conforming_strings rules, which every supported server uses."""

from __future__ import annotations


def quote_literal(value: str) -> str:
    """A string literal: 'it''s' (postgresql.conf quotes strings the same way)."""
    return "'" + value.replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    """An identifier exactly as given, case kept: "My Table"."""
    return '"' + name.replace('"', '""') + '"'
