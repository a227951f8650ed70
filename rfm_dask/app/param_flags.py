"""An estimator's parameters as command-line options, derived from the estimator alone.

The estimator's ``__init__`` signature names the parameters and gives their defaults, its numpydoc Parameters
section their help, and its ``_parameter_constraints`` (scikit-learn's declarative validation) how a value is spelled
on the command line: a number as a number, a word of a ``StrOptions`` (``auto``, a solver's name) as itself, None as
``none``, and an on/off parameter as ``--name``/``--no-name`` (``--name=WORD`` where it also takes words). A
parameter added to the estimator is an option of ``rfm-dask fit`` with no edit of the command line. Values are only
parsed here; the estimator checks them.
"""

from __future__ import annotations

import argparse
import inspect
from numbers import Integral
from typing import Any, Callable

from sklearn.utils._param_validation import Interval, StrOptions

NONE = "none"  # None on the command line


def parameter_names(cls: type) -> list[str]:
    """The named parameters of ``cls.__init__`` in signature order (not ``self``, ``*args`` or ``**kwargs``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind in kinds]


def parameter_docs(cls: type) -> dict[str, str]:
    """Each parameter's description from the numpydoc Parameters sections of ``cls`` and its bases (the nearest
    class's entry wins), as one line of plain text (double backquotes dropped): {name: description}."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_parameters_section(klass.__doc__ or ""))
    return docs


def _parameters_section(doc: str) -> dict[str, str]:
    """{name: description} of the numpydoc Parameters section of the docstring ``doc``."""
    lines = inspect.cleandoc(doc).splitlines()
    docs: dict[str, list[str]] = {}
    name, inside = None, False
    for i, line in enumerate(lines):
        header = i + 1 < len(lines) and lines[i + 1].strip() and set(lines[i + 1].strip()) == {"-"}
        if header:
            inside, name = line.strip() == "Parameters", None
        elif inside and line.strip() and set(line.strip()) != {"-"}:
            if not line[0].isspace():  # "name : type"
                name = line.split(":")[0].strip()
                docs[name] = []
            elif name is not None:
                docs[name].append(line.strip())
    return {key: " ".join(text).replace("``", "") for key, text in docs.items()}


def _spelling(constraints: list) -> tuple[type | None, list[str], bool]:
    """(int, float or None: the number a text may be; the ``StrOptions`` words, sorted; whether None is allowed)
    of a parameter's constraints; ``TypeError`` for constraints that have no command-line spelling."""
    unknown = [c for c in constraints if not (c is None or isinstance(c, (Interval, StrOptions)))]
    if unknown:
        raise TypeError(f"constraints {unknown} have no command-line spelling")
    numbers = [c.type for c in constraints if isinstance(c, Interval)]
    convert = (int if all(t is Integral for t in numbers) else float) if numbers else None
    words = sorted(word for c in constraints if isinstance(c, StrOptions) for word in c.options)
    return convert, words, any(c is None for c in constraints)


def value_parser(constraints: list) -> Callable[[str], Any]:
    """The parser of one option's text for a parameter with these constraints: a word of its ``StrOptions`` is
    kept, ``none`` is None where None is allowed, anything else is an int or a float as its ``Interval`` says
    (text as is when there is no number to parse). Its ``__name__`` says what it expects, for error messages."""
    convert, words, allows_none = _spelling(constraints)

    def parse(text: str) -> Any:
        if text in words:
            return text
        if allows_none and text == NONE:
            return None
        return text if convert is None else convert(text)

    names = ([convert.__name__] if convert else []) + [repr(w) for w in words] + ([repr(NONE)] if allows_none else [])
    parse.__name__ = " or ".join(names) if convert else "string"
    return parse


def _metavar(name: str, constraints: list) -> str | None:
    """``{a,b}`` for a choice of words, ``NAME|auto|none`` for a number or words; None (argparse's ``NAME``) for a
    plain number."""
    convert, words, allows_none = _spelling(constraints)
    extra = words + ([NONE] if allows_none else [])
    if convert is None:
        return "{" + ",".join(extra) + "}"
    return "|".join([name.upper(), *extra]) if extra else None


def add_parameter_options(parser: argparse.ArgumentParser, cls: type, names: list[str] | None = None,
                          defaults: dict[str, Any] | None = None) -> None:
    """Add an option ``--name-with-dashes`` (its ``dest`` the name) to ``parser`` for each of the parameters
    ``names`` of ``cls`` (None: all of them, see ``parameter_names``), with the estimator's default (or the one in
    ``defaults``), its numpydoc description as help, and its value parsed as its ``_parameter_constraints`` say
    (``value_parser``; ``["boolean"]``: ``--name``/``--no-name``; "boolean" and words: ``--name`` (on),
    ``--no-name`` (off) or ``--name=WORD``).

    Raises ``TypeError`` for a parameter without a numpydoc entry, without constraints, or with constraints that
    have no command-line spelling.
    """
    docs, signature = parameter_docs(cls), inspect.signature(cls.__init__).parameters
    for name in parameter_names(cls) if names is None else names:
        constraints = cls._parameter_constraints.get(name)
        if name not in docs or constraints is None:
            raise TypeError(f"{cls.__name__} parameter {name!r} needs an entry in the Parameters section of the "
                            "docstring and in _parameter_constraints to be a command-line option")
        default = (defaults or {}).get(name, signature[name].default)
        flag, text = "--" + name.replace("_", "-"), docs[name].replace("%", "%%")
        if constraints == ["boolean"]:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif "boolean" in constraints:  # on, off or a word: --name, --no-name, --name=WORD
            words = _spelling([c for c in constraints if c != "boolean"])[1]
            parser.add_argument(flag, nargs="?", const=True, choices=[True, *words], default=default, help=text,
                                metavar="{" + ",".join(words) + "}")
            parser.add_argument("--no-" + flag[2:], dest=name, action="store_false", default=default,
                                help=f"{flag} off")
        else:
            parser.add_argument(flag, type=value_parser(constraints), default=default, help=text,
                                metavar=_metavar(name, constraints))


def parameter_arguments(params: dict[str, Any]) -> list[str]:
    """Command-line arguments giving estimator parameters (the inverse of ``add_parameter_options``): a bool as
    ``--name``/``--no-name``, None as ``none``, anything else as its text."""
    argv = []
    for name, value in params.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, NONE if value is None else str(value)]
    return argv
