"""The settings registry: each training regime is one object in one file (settings/sft.py, sdf.py,
dpo.py), implementing traitloop.settings.base.Setting. The config's `setting` choices come from here;
a new setting is one new file plus `register(MySetting())`."""

from __future__ import annotations

from traitloop.errors import UserError
from traitloop.settings.base import CycleSources, Setting, TokenCounts
from traitloop.settings.dpo import Dpo
from traitloop.settings.sdf import Sdf
from traitloop.settings.sft import Sft

SETTINGS: dict[str, Setting] = {s.name: s for s in (Sft(), Sdf(), Dpo())}


def register(setting: Setting) -> Setting:
    """Add a setting (or replace one of the same name); `setting: NAME` then selects it."""
    SETTINGS[setting.name] = setting
    return setting


def get_setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise UserError(f"unknown setting {name!r}: choose one of {', '.join(SETTINGS)}") from None


__all__ = ["SETTINGS", "CycleSources", "Setting", "TokenCounts", "get_setting", "register"]
