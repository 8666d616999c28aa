"""What the base-model resolver (``careloop.base_model``) and the model builders (``.default``,
``.demo``) share: the build record careloop writes into a model directory it made, and the
error a missing base model raises. Apart, so the resolver can call the builders without the
builders importing the resolver back."""

from __future__ import annotations

import json
from pathlib import Path

BUILD_INFO_FILE = "careloop_build.json"


class BaseModelUnavailable(Exception):
    """The configured base model cannot be loaded; the message says which setting to change."""


def read_build_info(path: Path) -> dict | None:
    """The record careloop wrote into a model directory it made, or None if ``path`` is not one."""
    info_file = Path(path) / BUILD_INFO_FILE
    if not info_file.is_file():
        return None
    try:
        return json.loads(info_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
