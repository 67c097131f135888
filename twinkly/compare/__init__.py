"""Comparing the answers of the source of truth and the target: values, rows and SQL."""
