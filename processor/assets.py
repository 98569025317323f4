"""Where the files recohop's commands read at run time are: the same lookup in a source checkout and in an
installed wheel, so `pip install recohop` works from any directory.

The repository's `collector-config/` is the one source of the templates and the default rule files. A wheel
carries it as the package data directory `processor/collector_config` (setup.py maps it); a checkout (or an
editable install) reads it in place. Config files name a shipped file as `builtin:<path>`, e.g.
`builtin:policies/default.yaml`, which resolves here wherever recohop is installed.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BUILTIN_PREFIX = "builtin:"


def collector_config_dir() -> Path:
    """The shipped collector-config directory (templates, policies, redaction, derivations, ...)."""
    packaged = Path(str(files("processor") / "collector_config"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "collector-config"


def builtin_file(name: str) -> Path:
    """A shipped file by its path below collector-config/, e.g. "redaction/default.yaml"."""
    return collector_config_dir() / name


def resolve_builtin(value: str) -> Path | None:
    """`builtin:<path>` -> the shipped file; None for anything else."""
    if not value.startswith(BUILTIN_PREFIX):
        return None
    return builtin_file(value[len(BUILTIN_PREFIX):])
