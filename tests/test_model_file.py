"""Model files: save/load round trips (in-process and in a new process), and refusal of bad files without pickle."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import rfm_dask
from rfm_dask import ModelFileError, RFMClassifier, RFMRegressor

import reference as ref

DATA = Path(__file__).parent / "data"


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



def test_paths_are_not_model_state(fitted, tmp_path, client):
    """A checkpoint path is neither saved nor restored: a file naming one cannot make a later fit write there."""
    X, reg, _ = fitted
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"precious")
    reg.set_params(checkpoint=str(precious), resume=True)
    try:
        path = reg.save(tmp_path / "m.rfm")
    finally:
        reg.set_params(checkpoint=None, resume=False)
    params = json.loads(zipfile.ZipFile(path).read("metadata.json"))["state"]["params"]
    assert not {"checkpoint", "resume", "client"} & set(params)
    crafted = _rewrite(path, tmp_path / "crafted.rfm", _set(["state", "params", "checkpoint"], str(precious)))
    loaded = rfm_dask.load(crafted)
    assert loaded.checkpoint is None and loaded.resume is False
    loaded.set_params(client=client, iters=1).fit(X, X[:, 0])
    assert precious.read_bytes() == b"precious"

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


def _refuse_unpickling_in_this_thread(monkeypatch) -> None:
    """Make ``pickle.load`` and ``pickle.loads`` fail the test when this thread calls them. Other threads (the
    session cluster's event loop and workers) keep the real ones: a failing stand-in there would break the cluster,
    not this test."""
    import threading

    me = threading.get_ident()
    for name in ("load", "loads"):
        real = getattr(pickle, name)

        def refused(*args, _real=real, **kwargs):
            if threading.get_ident() == me:
                pytest.fail("pickle used while loading")
            return _real(*args, **kwargs)

        monkeypatch.setattr(pickle, name, refused)


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
    _refuse_unpickling_in_this_thread(monkeypatch)  # numpy would unpickle an object array with pickle.load
    for name, message in cases.items():
        with pytest.raises(ModelFileError, match=message):
            rfm_dask.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        rfm_dask.load(tmp_path / "missing.rfm")


def test_pickled_array_is_refused(fitted, tmp_path, monkeypatch):
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
    _refuse_unpickling_in_this_thread(monkeypatch)
    with pytest.raises(ModelFileError, match="without pickle"):
        rfm_dask.load(path)


def test_format1_files_still_load():
    """Model files of format 1, written by the code that introduced them (tests/data/make_format1_models.py), load
    and predict what that code predicted: a three-class classifier (diagonal M), a regressor and a two-output
    regressor (Gaussian kernel, FACT). Predictions may differ only by the float32 rounding of the kernel entries
    (``reference.float32_kernel_error``) carried through |coef|."""
    expected = np.load(DATA / "format1_expected.npz", allow_pickle=False)
    X_test = expected["X_test"]
    for name in ("classifier", "regressor", "multi_output_regressor"):
        model = rfm_dask.load(DATA / f"format1_{name}.rfm")
        m = model.model_
        E = ref.float32_kernel_error(X_test, m.centres, m.feature_matrix, m.spec.kind, m.spec.bandwidth,
                                     m.spec.exponent)
        bound = 8 * E @ np.abs(m.coef)  # (n, c): each score's rounding bound
        if name == "classifier":
            assert isinstance(model, RFMClassifier) and list(model.classes_) == ["ant", "bee", "cow"]
            np.testing.assert_array_equal(model.predict(X_test), expected["classifier_labels"])
            proba = model.predict_proba(X_test)
            # scores normalised by their clipped sum (about 1 for one-hot targets): the bound relative to that sum
            assert np.all(np.abs(proba - expected["classifier_proba"]) <= 4 * bound.sum(axis=1, keepdims=True))
        else:
            assert isinstance(model, RFMRegressor)
            got = model.predict(X_test)
            assert got.shape == expected[name].shape
            assert np.all(np.abs(got.reshape(bound.shape) - expected[name].reshape(bound.shape)) <= bound)


# -- bounded loading: bombs are refused before they are decompressed ---------------------------------------------
BOMB_BYTES = 256 << 20  # decompressed size of each deflate bomb (from a file of about 250 KB)
PEAK_LIMIT = 50 << 20  # what a refused load may allocate


def _npy_header(shape: tuple, dtype: str) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _with_member(good, dst, name: str, pieces, edit_metadata=None):
    """A copy of a model archive whose member ``name`` is the concatenated ``pieces`` (written as a stream, never
    held whole), with its metadata dict edited."""
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if item.filename == name:
                continue
            data = zin.read(item.filename)
            if item.filename == "metadata.json" and edit_metadata:
                meta = json.loads(data)
                edit_metadata(meta)
                data = json.dumps(meta).encode()
            zout.writestr(item, data)
        with zout.open(name, "w", force_zip64=True) as out:
            for piece in pieces:
                out.write(piece)
    return dst


def _repeated(n: int, byte: bytes = b"\0"):
    """n bytes ``byte``, in pieces of 1 MiB."""
    piece = byte * (1 << 20)
    for start in range(0, n, len(piece)):
        yield piece[: min(len(piece), n - start)]


def _declare(name: str, shape: list, dtype: str, pieces=()):
    """Metadata edit: array ``name`` has ``shape`` and ``dtype``, and the SHA-256 of ``pieces``."""
    import hashlib

    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)

    def edit(meta):
        meta["arrays"][name] = {"shape": shape, "dtype": dtype, "sha256": digest.hexdigest()}

    return edit


def _bombs(good, root) -> dict:
    """name -> (file, what the refusal says)."""
    n = BOMB_BYTES // 8
    array_bomb = [_npy_header((n,), "<f8"), *_repeated(8 * n)]
    header_bomb = [_npy_header((100000, 100000), "<f8")]
    negative = [_npy_header((-1, -1), "<f8"), bytes(8)]  # -1 x -1 = 1 value: the member's size fits
    with zipfile.ZipFile(good) as archive:
        coef = np.lib.format.read_array(archive.open("arrays/coef.npy"))
    nan_coef = coef.copy()
    nan_coef.flat[0] = np.nan
    nan_blob = [_npy_header(coef.shape, coef.dtype.str), np.ascontiguousarray(nan_coef).tobytes()]
    metadata = json.loads(zipfile.ZipFile(good).read("metadata.json"))
    text = json.dumps(metadata).encode()
    files = {
        "metadata deflate bomb": (_with_member(good, root / "meta_bomb.rfm", "metadata.json",
                                               [text[:-1], *_repeated(BOMB_BYTES, b" "), b"}"]),  # valid JSON
                                              "max-metadata-bytes"),
        "array deflate bomb": (_with_member(good, root / "array_bomb.rfm", "arrays/coef.npy", array_bomb,
                                            _declare("coef", [n], "<f8", array_bomb)), "compression bomb"),
        "header bomb, declared in the metadata too": (
            _with_member(good, root / "header_bomb.rfm", "arrays/coef.npy", header_bomb,
                         _declare("coef", [100000, 100000], "<f8", header_bomb)), "declares 80000000000 bytes"),
        "header bomb, metadata as written": (
            _with_member(good, root / "header_only.rfm", "arrays/coef.npy", header_bomb),
            "does not match its recorded shape"),
        "header of negative shape": (
            _with_member(good, root / "negative.rfm", "arrays/coef.npy", negative,
                         _declare("coef", [-1, -1], "<f8", negative)), "negative shape"),
        "NaN coefficients, checksum recomputed": (
            _with_member(good, root / "nan.rfm", "arrays/coef.npy", nan_blob,
                         _declare("coef", list(coef.shape), coef.dtype.str, nan_blob)), "NaN or infinite"),
    }
    return files


def test_bombs_are_refused_in_bounded_memory(fitted, tmp_path):
    """Deflate bombs (metadata or array) and .npy header bombs are refused with ModelFileError before they are
    decompressed or allocated: the load allocates less than PEAK_LIMIT (traced by tracemalloc)."""
    import tracemalloc

    _, reg, _ = fitted
    good = reg.save(tmp_path / "good.rfm")
    peaks = {}
    for name, (path, match) in _bombs(good, tmp_path).items():
        assert path.stat().st_size < 1 << 20, (name, path.stat().st_size)
        tracemalloc.start()
        try:
            with pytest.raises(ModelFileError, match=match) as info:
                rfm_dask.load(path)
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert path.name in str(info.value)
    print({name: f"{peak / 2**20:.2f} MiB" for name, peak in peaks.items()})
    assert all(peak < PEAK_LIMIT for peak in peaks.values()), peaks
