"""The provider preset catalog: one TOML file per real provider, shipped with the package.

Each ``<name>.toml`` beside this module holds what that provider's own OAuth docs say
(its endpoints, how it wants the client secret, how it joins scopes, where the token
sits in its answer, which values a later API call needs...), with the doc pages it
comes from.  The files are data rather than code so that adding or correcting a
provider is a reviewable one-file change, and so the catalog can be listed over HTTP.

The catalog is read once per process (it cannot change while the package is
installed) and handed out read-only; a broken file stops the load with a
``ConfigurationError`` naming the file and the key.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType

from ..errors import ConfigurationError, InvalidValue
from ._preset import PUBLIC_FIELDS, ProviderPreset
from ._schema import parse_preset

__all__ = ["PUBLIC_FIELDS", "ProviderPreset", "catalog", "get_preset", "load_presets"]

_SUFFIX = ".toml"


def load_presets(directory: Path | Traversable) -> Mapping[str, ProviderPreset]:
    """Every ``*.toml`` preset in ``directory``, checked, as a read-only mapping by name."""
    return _load(entry for entry in directory.iterdir() if entry.name.endswith(_SUFFIX))


@functools.cache
def catalog() -> Mapping[str, ProviderPreset]:
    """The presets shipped with the package, by name (loaded and checked once)."""
    return load_presets(resources.files(__name__))


def get_preset(name: str) -> ProviderPreset:
    """The preset called ``name``; an unknown name is the caller's invalid ``provider``."""
    presets = catalog()
    preset = presets.get(name) if isinstance(name, str) else None
    if preset is None:
        known = ", ".join(sorted(presets))
        raise InvalidValue("provider", f"unknown preset {str(name)[:64]!r}; known: {known}")
    return preset


def _load(entries: Iterable[Traversable]) -> Mapping[str, ProviderPreset]:
    presets: dict[str, ProviderPreset] = {}
    for entry in sorted(entries, key=lambda e: e.name):
        try:
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"Provider preset {entry.name}: not valid TOML ({exc}).") from None
        preset = parse_preset(entry.name[: -len(_SUFFIX)], entry.name, data)
        presets[preset.name] = preset
    return MappingProxyType(presets)
