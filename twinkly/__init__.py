"""Twinkly: a PostgreSQL wire-protocol proxy that runs every statement on two databases."""

__version__ = "0.1.0"
