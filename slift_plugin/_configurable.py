"""What a describable class is: :class:`Configurable`, :func:`argument_checker` and the errors.

The vocabulary shared by :mod:`slift_plugin.config` (which describes steppers and builds
them back) and :mod:`slift_plugin._builtin_configs` (its table of built-in classes). It
sits below both so that the table need not import the module that looks things up in
it, and the two never import each other. Import these names from
:mod:`slift_plugin.config`, which re-exports them as its public API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn


class ConfigError(ValueError):
    """A stepper description that is not JSON, names an unknown class, or holds wrong values."""


class NotDescribableError(ValueError):
    """A stepper (or a module in it) whose construction cannot be recorded as data."""


@dataclass(frozen=True)
class Configurable:
    """How one module class is described as data and built again from it.

    The built-in table (:mod:`slift_plugin._builtin_configs`) holds one for each built-in
    stepper and backbone; a package makes its own class describable with an entry point
    of the group :data:`slift_plugin.config.ENTRY_POINT_GROUP` named after the class and
    pointing at one of these.

    Attributes
    ----------
    cls : type
        The class, matched exactly: a subclass is not described by its base's entry.
    arguments : tuple of str
        Names of the plain arguments of a description, every one of them required.
    modules : tuple of str
        Names of the module arguments; each is the instance's attribute of that name,
        described recursively.
    describe : callable
        ``describe(module) -> dict``: the plain arguments (JSON values) of ``module``;
        raises :class:`NotDescribableError` naming what cannot be recorded.
    check : callable
        ``check(args)``: raises :class:`ConfigError` naming an argument of a wrong type
        or an absurd size, before anything is built.
    build : callable
        ``build(args, modules) -> module``: a new instance from checked arguments and
        the built module arguments.
    added_later : Mapping
        Arguments (among ``arguments``) that descriptions written before they existed
        lack, with the value such a description meant: filled in when absent, so that
        older checkpoints still load.
    """

    cls: type[nn.Module]
    arguments: tuple[str, ...]
    modules: tuple[str, ...]
    describe: Callable[[nn.Module], dict[str, Any]]
    check: Callable[[Mapping[str, Any]], None]
    build: Callable[[dict[str, Any], dict[str, nn.Module]], nn.Module]
    added_later: Mapping[str, Any] = field(default_factory=dict)


def argument_checker(
    schema: Mapping[str, Callable[[object], str | None]], what: str
) -> Callable[[Mapping[str, Any]], None]:
    """A ``check(args)`` for a :class:`Configurable`, from one check per argument.

    Parameters
    ----------
    schema : Mapping
        Argument name -> ``check(value)``, which returns None when ``value`` is fine and
        otherwise a phrase saying what was expected (``"an integer in [1, 64]"``).
    what : str
        The class name, for the messages.

    Returns
    -------
    callable
        ``check(args)``, raising :class:`ConfigError` ``"<what>: <name> must be
        <expected>, got <value>"`` for the first argument that fails.
    """

    def check(args: Mapping[str, Any]) -> None:
        for name, check_value in schema.items():
            expected = check_value(args[name])
            if expected is not None:
                raise ConfigError(f"{what}: {name} must be {expected}, got {args[name]!r:.80}")

    return check


def one_of(options: tuple[str, ...] | Mapping[str, Any]) -> Callable[[object], str | None]:
    """An argument check (for :func:`argument_checker`): a string among ``options``."""
    return lambda v: None if isinstance(v, str) and v in options else f"one of {sorted(options)}"
