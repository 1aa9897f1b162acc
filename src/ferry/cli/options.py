"""Typer commands whose options are the fields of a settings group in ``ferry.settings``, declared there once.

Each field becomes ``--field-name`` (or its declared ``option``) with the field's help, default and
``FERRY_*`` variable; the command's own parameters (a file argument, a flag of its own) come first.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ferry.settings import SettingsGroup

PANEL_TITLES = {"server": "Server", "limits": "Limits", "models": "Models", "observability": "Observability"}


def settings_command(
    run: Callable[..., Any],
    group: type[SettingsGroup],
    *,
    arguments: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    panels: bool = False,
) -> Callable[..., Any]:
    """A typer command calling ``run(*own parameters, settings=group(...))``.

    ``arguments`` are the fields taken as positional arguments; ``only`` limits the options to these
    fields (the others keep their defaults); ``panels`` groups the options in ``--help`` by their panel.
    """
    own = [p for p in inspect.signature(run).parameters.values() if p.name != "settings"]
    hints = typing.get_type_hints(run, include_extras=True)
    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name]) for p in own]
    field_types = typing.get_type_hints(group)
    for field in dataclasses.fields(group):  # type: ignore[arg-type]
        if only is not None and field.name not in only:
            continue
        marker, default = _marker(group, field, field.name in arguments, panels)
        annotation = _annotated(field_types[field.name], marker)
        parameters.append(
            inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        )

    def command(**values: Any) -> Any:
        given = {p.name: values.pop(p.name) for p in own}
        return run(**given, settings=group(**values))

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = run.__doc__
    command.__name__ = run.__name__
    return command


def _annotated(kind: Any, marker: Any) -> Any:
    return Annotated[kind, marker]


def _marker(group: type[SettingsGroup], field: dataclasses.Field[Any], argument: bool, panels: bool) -> tuple[Any, Any]:
    help_text, env = field.metadata["help"], group.env_name(field.name) if group.env_options else None
    if argument:
        return typer.Argument(help=help_text, envvar=env), inspect.Parameter.empty
    option = field.metadata.get("option") or ()
    declared = (option,) if isinstance(option, str) else tuple(option)
    panel = PANEL_TITLES[field.metadata["panel"]] if panels else None
    return typer.Option(*declared, help=help_text, envvar=env, rich_help_panel=panel), field.default


def check_tracing(target: str) -> None:
    """Refuse ``--tracing`` at start-up when the extra is missing or the target cannot be written."""
    from ferry.cli.errors import run

    try:
        from ferry.observability.tracing import check_target
    except ImportError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tracing") from None
    run(lambda: check_target(target))
