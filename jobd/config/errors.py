"""The one error of configuration."""

from __future__ import annotations


class ConfigError(Exception):
    """Invalid configuration; the message is one line that names the key."""
