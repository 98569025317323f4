"""Fixtures of the migration tests: the migrate helpers importable whatever the rootdir."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
