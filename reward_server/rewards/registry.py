"""The registry of reward families (SPEC §14): every task type the service accepts, and where each
came from. lm-evaluation-harness's ``lm_eval/api/registry.py`` is the model: lazy ``module:object``
entries, Python entry points for third-party plug-ins, an error on a name or alias clash, and a
registry that is frozen once the server starts.

Three sources, in this order:

1. the built-ins (``reward_server/rewards/families``), declared lazily: their names and aliases are
   known without importing them, so a server that never sees a math item never imports sympy;
2. entry points in the group ``mixed_reward.rewards`` of installed packages (each a RewardFamily
   subclass or instance);
3. ``--rewards-module FILE.py``: every RewardFamily subclass defined in the file.

Routing is by the declared type only: guessing a type from the text would silently score a caption
as a number, so an unknown name is a client error that lists what is accepted. Names are folded
(case, and ``-``/space/``_`` are the same) before they are compared, for clashes as for lookups.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from reward_server.errors import UsageError
from reward_server.rewards.errors import UnknownTaskType
from reward_server.rewards.family import RewardFamily

ENTRY_POINT_GROUP = "mixed_reward.rewards"
_SEPARATORS = re.compile(r"[\s_\-]+")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def normalise_task_name(name: str) -> str:
    """Fold the spellings clients use (``Multiple-Choice``, ``free form``) onto one key."""
    return _SEPARATORS.sub("_", name.strip().lower()).strip("_")


class FamilyClash(UsageError):
    """Two families claim one name (a start-up error, exit 2): the message names both."""


class PluginError(UsageError):
    """A plug-in (entry point or --rewards-module file) cannot be loaded or is not a family."""


@dataclass
class _Entry:
    name: str
    aliases: tuple[str, ...]
    origin: str  # "built-in", "entry point NAME (dist)", "FILE.py"
    target: Any  # "module:Class", a RewardFamily subclass or an instance
    family: RewardFamily | None = None


def _instantiate(target: Any, origin: str) -> RewardFamily:
    if isinstance(target, str):
        module_name, _, attribute = target.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
    if inspect.isclass(target) and issubclass(target, RewardFamily):
        target = target()
    if not isinstance(target, RewardFamily):
        raise PluginError(f"{origin}: {target!r} is not a reward family (subclass reward_server.rewards.RewardFamily)")
    return target


def _check_traits(family: RewardFamily, origin: str) -> None:
    name = getattr(family, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(f"{origin}: a family's name must be lower case letters, digits and _, got {name!r}")
    low, high = family.accuracy_range
    if not low < high:
        raise PluginError(f"{origin}: family {name!r} has an empty accuracy_range {family.accuracy_range}")
    if type(family).score is RewardFamily.score and family.runs.value != "table":
        raise PluginError(f"{origin}: family {name!r} does not implement score()")


class FamilyRegistry:
    """Names (canonical and aliases) to reward families; see the module docstring."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._keys: dict[str, str] = {}  # folded name or alias -> canonical name
        self._frozen = False

    # --- building -----------------------------------------------------------------------------

    def _claim(self, name: str, aliases: Iterable[str], origin: str) -> None:
        if self._frozen:
            raise RuntimeError("the reward family registry is frozen once the server starts")
        claimed: dict[str, str] = {}
        for spelled in (name, *aliases):
            key = normalise_task_name(spelled)
            holder = self._keys.get(key) or claimed.get(key)
            if holder is not None:
                other = self._entries.get(holder)
                where = f"{holder!r} ({other.origin})" if other is not None else f"{holder!r} ({origin})"
                raise FamilyClash(
                    f"reward family {name!r} ({origin}) claims the name {spelled!r}, which belongs to family {where}"
                )
            claimed[key] = name
        self._keys.update(claimed)

    def declare(self, name: str, aliases: Sequence[str], target: str, origin: str = "built-in") -> None:
        """A family loaded on first use (``target`` is ``"module:Class"``)."""
        self._claim(name, aliases, origin)
        self._entries[name] = _Entry(name, tuple(aliases), origin, target)

    def add(self, family: RewardFamily | type[RewardFamily], origin: str) -> RewardFamily:
        """A family now (an instance, or a class to instantiate)."""
        instance = _instantiate(family, origin)
        _check_traits(instance, origin)
        self._claim(instance.name, instance.aliases, origin)
        self._entries[instance.name] = _Entry(instance.name, tuple(instance.aliases), origin, instance, instance)
        return instance

    def add_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        for point in importlib.metadata.entry_points(group=group):
            dist = getattr(point.dist, "name", "?")
            origin = f"entry point {point.name} ({dist})"
            try:
                loaded = point.load()
            except Exception as exc:  # a broken plug-in stops the start, naming itself
                raise PluginError(f"{origin}: cannot load {point.value}: {type(exc).__name__}: {exc}") from exc
            self.add(loaded, origin)

    def add_module_file(self, path: str | Path) -> list[RewardFamily]:
        """Every RewardFamily subclass defined in the Python file ``path`` (``--rewards-module``)."""
        file = Path(path)
        if not file.is_file():
            raise PluginError(f"--rewards-module {path}: no such file")
        module_name = f"mixed_reward_plugin_{normalise_task_name(file.stem)}_{abs(hash(str(file.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise PluginError(f"--rewards-module {path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise PluginError(f"--rewards-module {path}: {type(exc).__name__}: {exc}") from exc
        found = [
            obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, RewardFamily) and obj.__module__ == module_name
            and "name" in vars(obj)
        ]
        if not found:
            raise PluginError(f"--rewards-module {path}: defines no RewardFamily subclass with a name")
        return [self.add(cls, str(path)) for cls in found]

    def freeze(self) -> FamilyRegistry:
        self._frozen = True
        return self

    def copy(self) -> FamilyRegistry:
        """An unfrozen registry with the same entries (to add a server's plug-ins to the defaults)."""
        other = FamilyRegistry()
        other._entries = {name: _Entry(**vars(entry)) for name, entry in self._entries.items()}
        other._keys = dict(self._keys)
        return other

    # --- reading ------------------------------------------------------------------------------

    def _load(self, entry: _Entry) -> RewardFamily:
        if entry.family is None:
            family = _instantiate(entry.target, entry.origin)
            _check_traits(family, entry.origin)
            if family.name != entry.name or tuple(family.aliases) != entry.aliases:
                raise PluginError(
                    f"{entry.origin}: {entry.target} declares {family.name!r} {family.aliases}, "
                    f"registered as {entry.name!r} {entry.aliases}"
                )
            entry.family = family
        return entry.family

    def resolve(self, name: Any) -> RewardFamily:
        """The family a client's task type names; an unknown one raises, listing what is accepted."""
        if isinstance(name, RewardFamily):
            return name
        if not isinstance(name, str):
            raise UnknownTaskType(f"task type must be a string, got {type(name).__name__}; {self.valid_names()}")
        canonical = self._keys.get(normalise_task_name(name))
        if canonical is None:
            shown = name if len(name) <= 64 else name[:61] + "..."
            raise UnknownTaskType(f"unknown task type {shown!r}; {self.valid_names()}")
        return self._load(self._entries[canonical])

    def __getitem__(self, canonical: str) -> RewardFamily:
        return self._load(self._entries[canonical])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise_task_name(name) in self._keys

    def names(self) -> list[str]:
        """Canonical names, in registration order."""
        return list(self._entries)

    def accepted_names(self) -> list[str]:
        """Canonical names, then every alias: the ``enum`` of ``task_type`` in the OpenAPI document."""
        return [*self._entries, *(a for e in self._entries.values() for a in e.aliases)]

    def origin(self, name: str) -> str:
        return self._entries[name].origin

    def families(self) -> list[RewardFamily]:
        """Every family, loaded (metrics and /v1/info need their traits)."""
        return [self._load(entry) for entry in self._entries.values()]

    def valid_names(self) -> str:
        canonical = ", ".join(self._entries)
        aliases = ", ".join(f"{alias}->{e.name}" for e in self._entries.values() for alias in e.aliases)
        return f"valid: {canonical} (aliases: {aliases})"


def _builtins() -> FamilyRegistry:
    from reward_server.rewards.families import BUILTINS

    registry = FamilyRegistry()
    for name, aliases, target in BUILTINS:
        registry.declare(name, aliases, target)
    return registry


@lru_cache(maxsize=1)
def default_registry() -> FamilyRegistry:
    """The built-ins and installed entry points, frozen: what a server without --rewards-module
    serves, and what the pure helpers below consult."""
    registry = _builtins()
    registry.add_entry_points()
    return registry.freeze()


def build_registry(modules: Sequence[str] = ()) -> FamilyRegistry:
    """The default registry plus the families of ``modules`` (``--rewards-module``), frozen."""
    if not modules:
        return default_registry()
    registry = default_registry().copy()
    for path in modules:
        registry.add_module_file(path)
    return registry.freeze()


def resolve_family(name: Any, registry: FamilyRegistry | None = None) -> RewardFamily:
    """``registry.resolve(name)`` (default: :func:`default_registry`)."""
    return (registry or default_registry()).resolve(name)


__all__ = [
    "ENTRY_POINT_GROUP",
    "FamilyClash",
    "FamilyRegistry",
    "PluginError",
    "build_registry",
    "default_registry",
    "normalise_task_name",
    "resolve_family",
]
