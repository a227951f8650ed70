"""Config files of the command line (YAML or TOML, a table per command): read, checked against the command's
options, and parsed as the command line parses each value; paths are confined to the file's directory."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """A config file that cannot be read or names options a command does not have."""


def load_config(path: Path) -> dict:
    """A config file as a dict: YAML (.yaml/.yml) or TOML (.toml)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of commands to options")
    return data


PATH_OPTIONS = frozenset({"checkpoint", "plot"})  # options naming files: confined to the config file's directory
FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


def _confined(base: Path, value: str, where: str) -> str:
    """A path from a config file, relative to the file's directory ``base``; one that escapes it is refused."""
    path = (base / value).resolve()
    if not path.is_relative_to(base.resolve()):
        raise ConfigError(f"{where} = {value!r} points outside the config file's directory {base}")
    return str(path)


def _config_scalar(action: argparse.Action, value: Any, where: str) -> Any:
    """One config value parsed as the command line parses the option's argument: by the option's ``type`` (from
    its text, so ``iters = 2.5`` fails as ``--iters 2.5`` does) and checked against its ``choices``. Strings,
    integers and floats are accepted where a number is expected; booleans, lists, tables and nulls are not."""
    if value is None or isinstance(value, (bool, list, dict)):
        raise ConfigError(f"{where} must be a single value, got {value!r}")
    if action.type is None and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string (quote it), got {value!r}")
    try:
        parsed = value if action.type is None else action.type(str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        kind = getattr(action.type, "__name__", "value")
        raise ConfigError(f"{where} must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {value!r}") from None
    if action.choices is not None and parsed not in action.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return parsed


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A config value as the option's command-line form would give it (see ``_config_scalar``): on/off options
    take true or false only (``--name[=WORD]`` options true, false or a word), list options (``nargs``) a list or
    a single string (one item)."""
    if isinstance(value, bool) and action.const is True and True in (action.choices or ()):  # --name[=WORD]
        return value
    if isinstance(action, FLAG_ACTIONS):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false (unquoted), got {value!r}")
        return value if not isinstance(action, argparse._StoreFalseAction) else not value
    if action.nargs in ("*", "+"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or (action.nargs == "+" and not items):
            raise ConfigError(f"{where} must be a list of values, got {value!r}")
        return [_config_scalar(action, item, f"{where}[{i}]") for i, item in enumerate(items)]
    return _config_scalar(action, value, where)


def apply_config(parser: argparse.ArgumentParser, command: str, config: dict, path: Path, commands: Iterable[str]
                  ) -> None:
    """Use the config's section for ``command`` (and a top-level ``scheduler``) as the parser's defaults.

    Every value goes through the option's command-line parsing (``_config_value``); path options are resolved
    against (and confined to) the config file's directory. A section or key that is not a command or option, and
    a value the command line would refuse, raise ``ConfigError`` naming the file and the key.
    """
    unknown = sorted(str(key) for key in config if key not in {*commands, "scheduler"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown section(s) {', '.join(unknown)} (expected "
                          f"{', '.join(sorted(commands))} or a top-level scheduler)")
    section = config.get(command) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: section {command!r} must be a mapping of options")
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:  # the first option of a dest: --name before --no-name
        if action.option_strings and action.dest not in {"help", "config", "version"}:
            actions.setdefault(action.dest, action)
    entries = [(f"config file {path}: [{command}] {key}", str(key).replace("-", "_"), value)
               for key, value in section.items()]
    if "scheduler" in config and "scheduler" not in {dest for _, dest, _ in entries}:
        entries.append((f"config file {path}: scheduler", "scheduler", config["scheduler"]))
    values = {}
    for where, dest, value in entries:
        if dest not in actions:
            raise ConfigError(f"{where}: unknown option for {command}")
        values[dest] = _config_value(actions[dest], value, where)
        if dest in PATH_OPTIONS:
            values[dest] = _confined(path.parent, str(values[dest]), where)
    parser.set_defaults(**values)
