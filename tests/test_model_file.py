"""Model files: save/load round trips (in-process and in a new process), and refusal of bad files without pickle."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import rfm_dask
from rfm_dask import ModelFileError, RFMClassifier, RFMRegressor


@pytest.fixture(scope="module")
def fitted(client):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = X[:, 0] * X[:, 1] + np.sin(X[:, 2])
    labels = np.array(["cat", "dog", "eel"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)]
    reg = RFMRegressor(iters=2, random_state=0, client=client).fit(X, y)
    clf = RFMClassifier(iters=1, diag=True, feature_update="fact", random_state=0, client=client).fit(X, labels)
    return X, reg, clf


def test_round_trip_in_process(fitted, tmp_path):
    X, reg, clf = fitted
    reg.preprocessing_ = {"format": 1, "feature_names": [f"f{i}" for i in range(6)]}
    for model in (reg, clf):
        path = model.save(tmp_path / f"{type(model).__name__}.rfm")
        loaded = rfm_dask.load(path)
        assert type(loaded) is type(model)
        assert loaded.get_params(deep=False) == {**model.get_params(deep=False), "client": None}
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
        np.testing.assert_array_equal(loaded.feature_matrix_, model.feature_matrix_)
        assert loaded.best_iter_ == model.best_iter_ and loaded.history_ == json.loads(json.dumps(model.history_))
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert rfm_dask.load(tmp_path / "RFMRegressor.rfm").preprocessing_ == reg.preprocessing_
    del reg.preprocessing_


def test_round_trip_of_an_l1_kernel_model(client, tmp_path):
    X = np.random.default_rng(1).normal(size=(200, 5)).astype(np.float32)
    y = np.abs(X[:, 0]) + X[:, 1] * X[:, 2]
    model = RFMRegressor(kernel="l1_laplace", exponent=0.8, iters=2, random_state=0, client=client).fit(X, y)
    assert model.feature_matrix_.shape == (5,)
    loaded = rfm_dask.load(model.save(tmp_path / "l1.rfm"))
    assert loaded.get_params(deep=False) == {**model.get_params(deep=False), "client": None}
    assert loaded.model_.spec == model.model_.spec
    np.testing.assert_array_equal(loaded.feature_matrix_, model.feature_matrix_)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_predictions_identical_in_a_new_process(fitted, tmp_path):
    X, reg, _ = fitted
    reg.save(tmp_path / "model.rfm")
    np.save(tmp_path / "X.npy", X)
    script = (
        "import numpy as np, rfm_dask, sys; d = sys.argv[1]; "
        "np.save(d + '/pred.npy', rfm_dask.load(d + '/model.rfm').predict(np.load(d + '/X.npy')))"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), reg.predict(X))


def test_existing_path_and_unfitted(fitted, tmp_path):
    _, reg, _ = fitted
    path = reg.save(tmp_path / "m.rfm")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        reg.save(path)
    assert path.read_bytes() == before
    reg.save(path, overwrite=True)
    with pytest.raises(Exception, match="not fitted"):
        RFMRegressor().save(tmp_path / "unfitted.rfm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.rfm"]


def _rewrite(src, dst, edit_metadata=None, edit_array=None):
    """Copy a model archive, editing its metadata dict and/or the bytes of one array."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "metadata.json" and edit_metadata:
                meta = json.loads(data)
                edit_metadata(meta)
                data = json.dumps(meta).encode()
            if item.filename.startswith("arrays/coef") and edit_array:
                data = edit_array(data)
            zout.writestr(item, data)
    return dst


def _set(path, value):
    def edit(meta):
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def test_bad_files_are_refused(fitted, tmp_path, monkeypatch):
    _, reg, _ = fitted
    good = reg.save(tmp_path / "good.rfm")
    blob = good.read_bytes()
    (tmp_path / "truncated.rfm").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "garbage.rfm").write_bytes(b"not a model at all" * 10)
    flip = lambda data: data[:-1] + bytes([data[-1] ^ 0xFF])  # noqa: E731
    cases = {
        "truncated.rfm": "corrupt or truncated",
        "garbage.rfm": "corrupt or truncated",
        _rewrite(good, tmp_path / "newer.rfm", _set(["format_version"], 99)).name: "format 99.*upgrade",
        _rewrite(good, tmp_path / "other.rfm", _set(["format"], "something")).name: "not an rfm_dask model",
        _rewrite(good, tmp_path / "flipped.rfm", edit_array=flip).name: "corrupt \\(checksum",
        _rewrite(good, tmp_path / "estimator.rfm", _set(["estimator"], "os.system")).name: "unknown estimator",
        _rewrite(good, tmp_path / "params.rfm", _set(["state", "params", "bogus"], 1)).name: "not a valid",
        _rewrite(good, tmp_path / "kernel.rfm", _set(["state", "params", "kernel"], "rbf")).name: "not a valid",
        # the L1 kernel with the full M of this model: the L1 kernel is defined for a diagonal M only
        _rewrite(good, tmp_path / "l1.rfm", _set(["state", "params", "kernel"], "l1_laplace")).name: "not a valid",
    }
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle used while loading"))
    for name, message in cases.items():
        with pytest.raises(ModelFileError, match=message):
            rfm_dask.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        rfm_dask.load(tmp_path / "missing.rfm")


def test_pickled_array_is_refused(fitted, tmp_path):
    """An archive whose array is an object array (which needs pickle) is refused, not unpickled."""
    _, reg, _ = fitted
    good = reg.save(tmp_path / "good.rfm")
    import hashlib
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    evil = buffer.getvalue()

    def edit(meta):
        meta["arrays"]["coef"] = {"shape": [1], "dtype": "|O", "sha256": hashlib.sha256(evil).hexdigest()}

    path = _rewrite(good, tmp_path / "evil.rfm", edit, edit_array=lambda _: evil)
    with pytest.raises(ModelFileError, match="without pickle"):
        rfm_dask.load(path)
