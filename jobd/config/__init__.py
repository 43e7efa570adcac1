"""TOML configuration → frozen, validated dataclasses.

Every error names the key it is about, on one line, e.g.
`jobs.nightly.schedule: "61 * * * *" is not a valid cron expression (...)`.
Unknown keys are refused so that a misspelt option never goes unnoticed.

`sections` holds the dataclasses, `table` the typed reads of one TOML table, `load` the
checks of each table (`cluster` those of [store] and [cluster]), `handlers` the import of a
Python handler.
"""

from __future__ import annotations

from jobd.config.errors import ConfigError
from jobd.config.load import is_loopback, load_config, parse_config
from jobd.config.sections import (
    JOB_NAME,
    MISFIRE_POLICIES,
    OVERLAP_POLICIES,
    SCOPES,
    SYNCHRONOUS_MODES,
    AlertsConfig,
    AuthConfig,
    ClusterConfig,
    Config,
    EventsConfig,
    GroupConfig,
    JobConfig,
    MetricsConfig,
    RetentionConfig,
    SchedulerConfig,
    ServerConfig,
    StoreConfig,
    Token,
    WorkersConfig,
)

__all__ = [
    "JOB_NAME",
    "MISFIRE_POLICIES",
    "OVERLAP_POLICIES",
    "SCOPES",
    "SYNCHRONOUS_MODES",
    "AlertsConfig",
    "AuthConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "EventsConfig",
    "GroupConfig",
    "JobConfig",
    "MetricsConfig",
    "RetentionConfig",
    "SchedulerConfig",
    "ServerConfig",
    "StoreConfig",
    "Token",
    "WorkersConfig",
    "is_loopback",
    "load_config",
    "parse_config",
]
