"""Python handlers named in the config as `package.module:function`."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from jobd.config.errors import ConfigError


@functools.lru_cache(maxsize=4096)  # every run of a job resolves its handler: import it once
def import_handler(spec: str, key: str) -> Callable[..., Any]:
    """Import `package.module:function`; raises ConfigError naming `key`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # any import-time failure of user code is a config error
        raise ConfigError(f"{key}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{key}: {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return target  # type: ignore[no-any-return]
