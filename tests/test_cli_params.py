"""The fit options are the estimator's parameters, derived from it (``rfm_dask.app.param_flags``): names and defaults
from the signature, help from the numpydoc Parameters section, parsing from ``_parameter_constraints``. A parameter
added to an estimator becomes an option, in config files too, with no edit of the command line."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from numbers import Integral, Real

import pytest
from sklearn.utils._param_validation import StrOptions

import rfm_dask
from rfm_dask.app import cli
from rfm_dask.app import commands as cli_commands
from rfm_dask.app import config_file as cli_config
from rfm_dask.estimators import RFMRegressor
from rfm_dask.parameters import RUN_PARAMS, Range
from rfm_dask.app.param_flags import add_parameter_options, parameter_arguments, parameter_docs, parameter_names


class _LeafRegressor(RFMRegressor):
    """An RFMRegressor with a tree's parameters (a stand-in for a subclass that adds parameters).

    Parameters
    ----------
    leaf_size : int, "auto" or None, default=None
        Rows per leaf; 100% of them when None.
    split_temperature : float or None, default=None
        Softness of a split.
    split_method : {"pca", "random"}, default="pca"
        How a node splits.
    balanced : bool, default=True
        Keep the leaves the same size.
    iters : int, default=5
        RFM iterations.
    """

    _parameter_constraints = {
        **RFMRegressor._parameter_constraints,
        "leaf_size": [Range(Integral, 1, None, closed="left"), StrOptions({"auto"}), None],
        "split_temperature": [Range(Real, 0, None, closed="neither"), None],
        "split_method": [StrOptions({"pca", "random"})],
        "balanced": ["boolean"],
    }

    def __init__(self, leaf_size: int | str | None = None, split_temperature: float | None = None,
                 split_method: str = "pca", balanced: bool = True, iters: int = 5) -> None:
        self.leaf_size = leaf_size
        self.split_temperature = split_temperature
        self.split_method = split_method
        self.balanced = balanced
        self.iters = iters


def _options(cls: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_parameter_options(parser, cls)
    return parser


def test_every_estimator_parameter_is_a_fit_option_with_its_default_and_doc():
    _, commands = cli.build_parser()
    actions: dict = {}
    for a in commands["fit"]._actions:  # a dest's first option (--centre-agop[=auto] before --no-centre-agop)
        actions.setdefault(a.dest, a)
    docs, signature = parameter_docs(RFMRegressor), inspect.signature(RFMRegressor.__init__).parameters
    names = cli_commands.fit_parameters()
    assert names == [n for n in parameter_names(RFMRegressor) if n not in RUN_PARAMS]
    assert len(names) == len(signature) - 1 - len(RUN_PARAMS) and set(docs) >= set(signature) - {"self"}
    for name in names:
        action = actions[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        assert action.default == (0 if name == "random_state" else signature[name].default), name
        assert action.help == docs[name].replace("%", "%%") and "``" not in action.help
    assert actions["diag"].option_strings == ["--diag", "--no-diag"]
    assert actions["checkpoint"].type is None and actions["resume"].help.startswith("continue")  # the CLI's own


@pytest.mark.parametrize("cls", [rfm_dask.RFMRegressor, rfm_dask.RFMClassifier])
def test_the_docstring_states_the_signature_defaults(cls):
    """The numpydoc ``default=`` of every parameter is the signature's (the help shows the signature's)."""
    stated = dict(re.findall(r"^ {4}(\w+) : .*default=(.+)$", cls.__doc__, flags=re.M))
    signature = inspect.signature(cls.__init__).parameters
    assert set(stated) == set(signature) - {"self"}
    for name, text in stated.items():
        assert ast.literal_eval(text) == signature[name].default, name


def test_a_parameter_added_to_a_subclass_is_an_option():
    parser = _options(_LeafRegressor)
    assert parser.parse_args([]) == argparse.Namespace(leaf_size=None, split_temperature=None, split_method="pca",
                                                       balanced=True, iters=5)
    args = parser.parse_args(["--leaf-size", "auto", "--split-temperature", "0.5", "--split-method", "random",
                              "--no-balanced", "--iters", "2"])
    assert vars(args) == {"leaf_size": "auto", "split_temperature": 0.5, "split_method": "random",
                          "balanced": False, "iters": 2}
    assert parser.parse_args(["--leaf-size", "64"]).leaf_size == 64
    assert parser.parse_args(["--leaf-size", "none", "--split-temperature", "none"]).split_temperature is None
    text = " ".join(parser.format_help().split())
    assert "--leaf-size LEAF_SIZE|auto|none Rows per leaf; 100% of them when None." in text
    assert "--split-method {pca,random} How a node splits." in text and "--balanced, --no-balanced" in text
    for bad in (["--leaf-size", "1.5"], ["--split-temperature", "warm"], ["--iters", "auto"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_parameter_arguments_are_parsed_back_to_the_parameters():
    params = {"leaf_size": None, "split_temperature": 1e-3, "split_method": "random", "balanced": False, "iters": 0}
    assert vars(_options(_LeafRegressor).parse_args(parameter_arguments(params))) == params
    params = {"leaf_size": "auto", "split_temperature": None, "split_method": "pca", "balanced": True, "iters": 7}
    assert vars(_options(_LeafRegressor).parse_args(parameter_arguments(params))) == params


def test_the_fit_command_takes_a_new_parameter_from_the_estimator(monkeypatch, tmp_path):
    monkeypatch.setattr(rfm_dask.estimators, "RFMRegressor", _LeafRegressor)
    (tmp_path / "c.toml").write_text('[fit]\nleaf-size = "auto"\nsplit_temperature = "none"\nbalanced = false\n')
    parser, commands = cli.build_parser()
    argv = ["fit", "s.zarr", "m.rfm", "--config", str(tmp_path / "c.toml"), "--split-method", "random"]
    args = cli._parse(parser, commands, argv)
    assert cli_commands.fit_params(args) == {"leaf_size": "auto", "split_temperature": None, "split_method": "random",
                                     "balanced": False, "iters": 5}
    (tmp_path / "bad.toml").write_text("[fit]\nleaf-size = 2.5\n")
    with pytest.raises(cli_config.ConfigError, match=r"bad.toml: \[fit\] leaf-size must be an int or 'auto' or 'none'"):
        cli._parse(parser, commands, ["fit", "s.zarr", "m.rfm", "--config", str(tmp_path / "bad.toml")])


def test_none_and_auto_are_spelled_as_on_the_command_line(tmp_path):
    (tmp_path / "c.yaml").write_text("fit:\n  patience: none\n  reg: auto\n  n-centers: '300'\n")
    parser, commands = cli.build_parser()
    args = cli._parse(parser, commands, ["fit", "s.zarr", "m.rfm", "--config", str(tmp_path / "c.yaml"),
                                         "--bandwidth", "auto", "--agop-samples", "none"])
    params = cli_commands.fit_params(args)
    assert (params["patience"], params["reg"], params["n_centers"]) == (None, "auto", 300)
    assert (params["bandwidth"], params["agop_samples"]) == ("auto", None)
    RFMRegressor(**params)._validate_params()


def test_a_parameter_without_doc_or_constraints_is_refused():
    class Undocumented(RFMRegressor):
        _parameter_constraints = {**RFMRegressor._parameter_constraints, "extra": ["boolean"]}

        def __init__(self, extra: bool = False, iters: int = 5) -> None:
            self.extra, self.iters = extra, iters

    with pytest.raises(TypeError, match="'extra' needs an entry in the Parameters section"):
        _options(Undocumented)

    class Unconstrained(Undocumented):
        """Parameters
        ----------
        extra : bool, default=False
            Something more.
        """

        _parameter_constraints = RFMRegressor._parameter_constraints

    assert parameter_docs(Unconstrained)["extra"] == "Something more."
    assert parameter_docs(Unconstrained)["iters"] == parameter_docs(RFMRegressor)["iters"]  # from the base
    with pytest.raises(TypeError, match="'extra' needs"):
        _options(Unconstrained)
