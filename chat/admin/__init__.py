"""Operators' view of keys, upstream credentials, sessions, messages and usage, a module a domain.

Secrets never appear: not the key hashes, not the encrypted upstream keys; only key ids and last
characters. Sessions, messages and usage are the record of what happened: read-only.
"""

from chat.admin import keys, sessions, upstreams, usage  # noqa: F401  (each registers its models)
