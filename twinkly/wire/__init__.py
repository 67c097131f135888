"""Sans-IO PostgreSQL wire protocol (version 3.0): framing, messages, encoders.

Nothing here imports Twisted; feed bytes in, get messages out.
"""
