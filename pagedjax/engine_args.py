"""Command-line options generated from `EngineConfig`'s fields (vLLM's flag names).

`add_engine_arguments(parser)` adds one option per field (`--max-model-len`, `--block-size`,
`--enable-prefix-caching/--no-enable-prefix-caching`, ...) with the field's help text, type,
choices and default; `engine_config_from_args(args, model)` builds the `EngineConfig` back.
Entry points (`generate`, `serve`, `bench`) call these, so an option is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses

from pagedjax.config import EngineConfig, field_type


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_engine_arguments(parser: argparse.ArgumentParser, *, defaults: dict | None = None,
                         exclude: tuple[str, ...] = (), title: str = "engine options") -> None:
    """Adds an argument group with one option per `EngineConfig` field (except `exclude`
    and the model itself). `defaults` overrides a field's default for this entry point (e.g.
    the server's max_num_batched_tokens)."""
    add_dataclass_arguments(parser, EngineConfig, defaults=defaults, exclude=exclude, title=title)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, defaults: dict | None = None,
                            exclude: tuple[str, ...] = (), title: str) -> None:
    """One option per field of the config dataclass `cls` whose fields carry `help` metadata
    (`pagedjax.config.option`)."""
    defaults = defaults or {}
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if not meta.get("cli", True) or field.name in exclude:
            continue
        default = defaults.get(field.name, field.default)
        kind = field_type(field, cls)
        names = [_flag(field.name)]
        help_text = meta["help"] + ("" if default is None else f" (default: {default})")
        if kind is bool:
            group.add_argument(*names, dest=field.name, default=default, action=argparse.BooleanOptionalAction,
                               help=meta["help"] + f" (default: {'on' if default else 'off'})")
            for alias in meta.get("aliases", ()):  # e.g. --no-prefix-caching: the negative spelling
                group.add_argument(alias, dest=field.name, action="store_const", const=not field.default,
                                   help=argparse.SUPPRESS)
            continue
        names += list(meta.get("aliases", ()))
        group.add_argument(*names, dest=field.name, type=kind, default=default, choices=meta.get("choices"),
                           help=help_text)


def dataclass_from_args(cls, args: argparse.Namespace):
    """An instance of `cls` from the options `add_dataclass_arguments` added."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def engine_config_from_args(args: argparse.Namespace, model: str | None, **overrides) -> EngineConfig:
    """The `EngineConfig` of the options `add_engine_arguments` added (fields it did not add
    keep their defaults); `overrides` win."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(EngineConfig) if hasattr(args, f.name)}
    values.update(model=model, **overrides)
    return EngineConfig(**values)
