"""Settings of a fleetscore home, one value object per section of fleetscore.toml, merged in one place.

    load.py       Config (the merged sections) and load_config: defaults < toml < FLEETSCORE_* env < flags
    sections.py   [storage] [catalog] [executor] [train] [web]
    schedule.py   [schedule]: retries, backoff, lease, poll, catch-up
    ingest.py     [ingest]: body and batch limits, log segments, compaction, stream windows
    streams.py    [kafka] [nats] [mqtt]: stream consumers' credentials (environment only)
    values.py     parsers of setting values that say where a bad value is

This package is the only reader of fleetscore.toml and of the environment's settings; unknown
sections and keys are errors. Secrets come from the environment only and are never logged.
"""

from fleetscore.config.ingest import IngestSettings
from fleetscore.config.load import CONFIG_FILE, DEFAULT_HOME, Config, load_config
from fleetscore.config.schedule import ScheduleSettings
from fleetscore.config.sections import CatalogSettings, ExecutorSettings, StorageSettings, TrainSettings, WebSettings

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_HOME",
    "CatalogSettings",
    "Config",
    "ExecutorSettings",
    "IngestSettings",
    "ScheduleSettings",
    "StorageSettings",
    "TrainSettings",
    "WebSettings",
    "load_config",
]
