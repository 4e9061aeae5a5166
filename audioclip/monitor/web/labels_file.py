"""Editing the ``[[labels]]`` of a ``monitor.toml`` while keeping the rest of the file as its author wrote it.

The file is parsed with tomlkit, which keeps comments, order and layout; only the label touched changes.
A label is written the way the file writes labels: a ``[[labels]]`` table, or an entry of an inline
``labels = [...]`` list (a plain string while it has nothing but a name). The new text is validated as the
monitor validates any ``monitor.toml`` (:meth:`~audioclip.monitor.config.MonitorConfig.from_dict`), so a
change the monitor would refuse at start is refused here with the same one-line :class:`ConfigError`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Array, InlineTable, Table

from ...files import atomic_write_text
from ..config import ConfigError, MonitorConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FIELDS = ("name", "prompts", "threshold", "hysteresis", "min_windows", "event", "privacy")
"""What a label has in the file; a field set to None is left out (the defaults apply)."""


class LabelNotFound(KeyError):
    pass


def _name_of(item) -> str | None:
    if isinstance(item, str):
        return str(item)
    if isinstance(item, (Table, InlineTable, dict)):
        name = item.get("name")
        return None if name is None else str(name)
    return None


def _entry(fields: dict, *, inline: bool):
    """A label's fields as a TOML item: a string for a bare name in an inline list, else a (inline) table."""
    fields = {k: fields[k] for k in FIELDS if fields.get(k) is not None}
    if inline and set(fields) == {"name"}:
        return fields["name"]
    table = tomlkit.inline_table() if inline else tomlkit.table()
    for key, value in fields.items():
        table[key] = list(value) if key == "prompts" else value
    return table


class LabelsFile:
    """A ``monitor.toml`` open for editing its labels: :meth:`add`, :meth:`update`, :meth:`remove`, then
    :meth:`check` (the new configuration, or ConfigError) and :meth:`save` (atomic)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.doc = tomlkit.parse(self.path.read_text(encoding="utf-8"))

    def _labels(self):
        labels = self.doc.get("labels")
        if labels is None:
            labels = self.doc["labels"] = tomlkit.aot()
        if not isinstance(labels, (AoT, Array)):
            raise ConfigError("labels", "must be a list ([[labels]] tables) to be edited here")
        return labels

    def _index(self, name: str) -> int:
        for i, item in enumerate(self._labels()):
            if _name_of(item) == name:
                return i
        raise LabelNotFound(name)

    def fields(self, name: str) -> dict:
        """The label's fields as written (absent ones None)."""
        item = self._labels()[self._index(name)]
        if isinstance(item, str):
            return {"name": str(item)}
        return {k: (list(item[k]) if k == "prompts" else item[k].unwrap() if hasattr(item[k], "unwrap") else item[k])
                for k in FIELDS if k in item}

    def add(self, fields: dict) -> None:
        labels = self._labels()
        labels.append(_entry(fields, inline=isinstance(labels, Array)))

    def update(self, name: str, changes: dict) -> None:
        """Set the fields in ``changes`` of label ``name`` (None: remove the key, the default applies)."""
        labels = self._labels()
        i = self._index(name)
        item = labels[i]
        if isinstance(item, str) or isinstance(labels, Array):
            merged = {**self.fields(name), **changes}
            labels[i] = _entry(merged, inline=isinstance(labels, Array))
            return
        for key, value in changes.items():  # a [[labels]] table: change its keys in place, keeping its comments
            if value is None:
                if key in item:
                    del item[key]
            else:
                item[key] = list(value) if key == "prompts" else value

    def remove(self, name: str) -> None:
        labels = self._labels()
        del labels[self._index(name)]

    def text(self) -> str:
        return tomlkit.dumps(self.doc)

    def check(self) -> MonitorConfig:
        """The configuration the edited file describes, validated as at start (ConfigError naming the key)."""
        text = self.text()
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("", f"not valid TOML: {e}", str(self.path)) from None
        return MonitorConfig.from_dict(data, origin=str(self.path))

    def save(self) -> None:
        atomic_write_text(self.path, self.text())
