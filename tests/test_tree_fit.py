"""Fitting a tree of leaf RFMs through the estimators: accuracy on a piecewise task, each row by its own leaf, the
same model on 1 and 2 workers, model files, leaf_size=None as today, and bad parameters refused."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from rfm_dask import RFMClassifier, RFMRegressor, load
from rfm_dask.tree import fit as tree_fit
from rfm_dask.tree import leaves as tree_leaves
from rfm_dask.tree import settings as tree_settings
from rfm_dask.tree.split import top_eigenvector
from rfm_dask.tree.structure import route

TREE = dict(leaf_size=250, split_samples=300, reg=1e-3, random_state=0)  # untuned leaves unless a test says


def piecewise(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two regions split by x0 (the steepest direction, 2 x0 in y), each with its own relevant feature (x1 left of
    0, x2 right of it); x3..x5 are noise features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    x = X.astype(np.float64)
    y = 2 * x[:, 0] + np.where(x[:, 0] < 0, np.sin(3 * x[:, 1]), np.sin(3 * x[:, 2]))
    return X, y


@pytest.fixture(scope="module")
def data():
    X, y = piecewise(1400, 0)
    return X[:1000], y[:1000], X[1000:], y[1000:]


@pytest.fixture(scope="module")
def tree_model(client, data):
    X, y, _, _ = data
    return RFMRegressor(bandwidth=3.0, iters=2, client=client, **TREE).fit(X, y)


def test_tree_beats_global_model_on_piecewise_task(client, data, tree_model):
    X, y, X_test, y_test = data
    global_model = RFMRegressor(bandwidth=3.0, reg=1e-3, iters=2, random_state=0, client=client).fit(X, y)  # as TREE
    tree_mse = np.mean((tree_model.predict(X_test) - y_test) ** 2)
    global_mse = np.mean((global_model.predict(X_test) - y_test) ** 2)
    assert tree_model.n_leaves_ == 4 and global_model.n_leaves_ == 1
    # the root splits on x0, the region boundary: its direction is within a few degrees of e0
    assert abs(tree_model.tree_.directions[0, 0]) > 0.99
    print(f"test MSE: tree {tree_mse:.4g}, global {global_mse:.4g}, var(y) {np.var(y_test):.4g}")
    assert tree_mse < 0.5 * global_mse, (tree_mse, global_mse)


def test_every_row_predicted_by_its_leaf(tree_model, data):
    _, _, X_test, _ = data
    pred = tree_model.predict(X_test)
    leaf = route(np, X_test, tree_model.tree_)
    for j, leaf_model in enumerate(tree_model.model_.leaves):
        mine = leaf == j
        np.testing.assert_array_equal(pred[mine], leaf_model.decision(X_test[mine])[:, 0])


def test_fitted_attributes(tree_model):
    m = tree_model
    assert m.n_leaves_ == m.tree_.n_leaves == len(m.leaf_sizes_) == len(m.leaf_histories_)
    assert m.leaf_sizes_.sum() == 900 and m.leaf_sizes_.max() <= 250  # 10% of the rows validate
    share = m.leaf_sizes_ / m.leaf_sizes_.sum()
    np.testing.assert_allclose(m.feature_matrix_, np.einsum("l,lij->ij", share, m.leaf_feature_matrices_))
    np.testing.assert_allclose(m.feature_importances_.sum(), 1.0)
    largest = int(np.argmax(m.leaf_sizes_))
    assert m.best_iter_ == m.leaf_best_iters_[largest] and m.history_ == m.leaf_histories_[largest]


def test_dask_input_is_lazy_and_equal(tree_model, data, client):
    _, _, X_test, _ = data
    lazy = tree_model.predict(da.from_array(X_test, chunks=(150, 6)))
    assert isinstance(lazy, da.Array)
    # the same row groups as the dask chunks: bit for bit (other groupings differ by float32 GEMM rounding only)
    expected = np.concatenate([tree_model.predict(X_test[s : s + 150]) for s in range(0, len(X_test), 150)])
    np.testing.assert_array_equal(client.compute(lazy).result(), expected)


def test_same_model_on_one_and_two_workers(data, tree_model):
    """Bitwise: the blocks depend on the data only, every draw is seeded from the node's position, each split model
    and leaf runs in one single-BLAS-thread task on the same rows, and projections are taken row by row."""
    X, y, X_test, _ = data
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as two:
            other = RFMRegressor(bandwidth=3.0, iters=2, client=two, **TREE).fit(X, y)
    np.testing.assert_array_equal(other.tree_.directions, tree_model.tree_.directions)
    np.testing.assert_array_equal(other.predict(X_test), tree_model.predict(X_test))


def test_streamed_input_gives_the_held_model(client, data, tree_model, monkeypatch):
    """Out of core (row blocks streamed from their recipe in every pass), each leaf reads its rows from a leaf-ordered
    Zarr store written once by dask's shuffle; the rows, their order and so the model are those of a fit on held
    blocks, bit for bit."""
    from rfm_dask.tree import store

    X, y, X_test, _ = data
    written = []
    ordered = store.leaf_ordered_rows
    monkeypatch.setattr(store, "leaf_ordered_rows", lambda *a: written.append(len(a[2])) or ordered(*a))
    with dask.config.set({"rfm.persist-fraction": 1e-12}):
        streamed = RFMRegressor(bandwidth=3.0, iters=2, client=client, **TREE).fit(da.from_array(X, chunks=(128, 6)), y)
    assert written == [4, 4]  # the training rows' store and the validation rows' store, each of 4 leaves
    np.testing.assert_array_equal(streamed.predict(X_test), tree_model.predict(X_test))


def test_streamed_leaves_shuffled_in_batches_give_the_held_model(client, data, tree_model, monkeypatch):
    """With a working-rows budget below one leaf's rows, each leaf's streamed rows are shuffled into a store of their
    own (one read of the blocks per leaf): the same model, bit for bit."""
    from rfm_dask.tree import store

    X, y, X_test, _ = data
    written = []
    ordered = store.leaf_ordered_rows
    monkeypatch.setattr(store, "leaf_ordered_rows", lambda *a: written.append(len(a[2])) or ordered(*a))
    with dask.config.set({"rfm.persist-fraction": 1e-12, "rfm.task-memory-fraction": 1e-12}):
        X_lazy = da.from_array(X, chunks=(128, 6))
        streamed = RFMRegressor(bandwidth=3.0, iters=2, client=client, **TREE).fit(X_lazy, y)
    assert written == [1] * 8  # 4 training and 4 validation stores, one leaf each
    np.testing.assert_array_equal(streamed.predict(X_test), tree_model.predict(X_test))


def test_model_file_round_trip(tree_model, data, tmp_path):
    _, _, X_test, _ = data
    path = tree_model.save(tmp_path / "tree.rfm")
    loaded = load(path)
    np.testing.assert_array_equal(loaded.predict(X_test), tree_model.predict(X_test))
    np.testing.assert_array_equal(loaded.leaf_sizes_, tree_model.leaf_sizes_)
    np.testing.assert_array_equal(loaded.leaf_feature_matrices_, tree_model.leaf_feature_matrices_)
    assert loaded.leaf_histories_ == tree_model.leaf_histories_ and loaded.get_params()["leaf_size"] == 250


def test_soft_routing_classifier_round_trip(client, data, tmp_path):
    X, y, X_test, y_test = data
    model = RFMClassifier(bandwidth=3.0, iters=1, split_temperature=0.3, client=client, **TREE).fit(X, y > 0)
    assert model.score(X_test, y_test > 0) > 0.8
    loaded = load(model.save(tmp_path / "soft.rfm"))
    np.testing.assert_array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))


def test_leaf_size_none_and_auto_are_the_global_model(client, data):
    X, y, X_test, _ = data
    today = RFMRegressor(iters=1, random_state=0, client=client).fit(X, y)  # the default leaf_size="auto"
    assert today.get_params()["leaf_size"] == "auto"
    for params in (dict(leaf_size=None, split_samples=10, split_method="pca", split_temperature=0.5),
                   dict(leaf_size="auto", reg=1e-3)):
        model = RFMRegressor(iters=1, random_state=0, client=client, **params).fit(X, y)
        assert model.n_leaves_ == 1 and not hasattr(model, "leaf_sizes_")
        if params["leaf_size"] is None:
            np.testing.assert_array_equal(model.predict(X_test), today.predict(X_test))


def test_leaf_size_auto_rule():
    """"auto" is the global model at every size (README, "Tree of leaf RFMs"); an int is a tree of that leaf size."""
    assert tree_settings.resolve_leaf_size("auto") is None and tree_settings.resolve_leaf_size(None) is None
    assert tree_settings.resolve_leaf_size(7) == 7 and tree_settings.resolve_leaf_size(np.int64(4000)) == 4000


def test_parent_init_starts_leaves_from_the_split_model(client, data):
    """With iters=0 a leaf keeps its initial M: under leaf_init='parent' its parent's split model's AGOP, whose top
    eigenvector is the parent's split direction."""
    X, y, _, _ = data
    model = RFMRegressor(bandwidth=3.0, iters=0, leaf_init="parent", client=client, **TREE).fit(X, y)
    children = model.tree_.children
    for node in range(model.tree_.n_splits):
        for child in children[node][children[node] < 0]:
            M = model.leaf_feature_matrices_[-child - 1]
            np.testing.assert_allclose(top_eigenvector(M), model.tree_.directions[node], atol=1e-12)
    identity = RFMRegressor(bandwidth=3.0, iters=0, client=client, **TREE).fit(X, y)
    np.testing.assert_array_equal(identity.leaf_feature_matrices_, np.broadcast_to(np.eye(6), (4, 6, 6)))


def test_split_samples_read_in_batches_give_the_same_tree(client, data, tree_model):
    """With a working-rows budget of one node's sample, each node's split rows are read on their own: the same tree
    and the same model, bit for bit."""
    X, y, X_test, _ = data
    with dask.config.set({"rfm.task-memory-fraction": 1e-12}):
        batched = RFMRegressor(bandwidth=3.0, iters=2, client=client, **TREE).fit(X, y)
    np.testing.assert_array_equal(batched.tree_.directions, tree_model.tree_.directions)
    np.testing.assert_array_equal(batched.predict(X_test), tree_model.predict(X_test))


def test_pca_split(client, data):
    X, y, X_test, y_test = data
    model = RFMRegressor(bandwidth=3.0, iters=1, split_method="pca", client=client, **TREE).fit(X, y)
    assert model.n_leaves_ == 4
    assert np.mean((model.predict(X_test) - y_test) ** 2) < np.var(y_test)


@pytest.mark.parametrize("params, message", [
    (dict(leaf_size=1), "leaf_size"),
    (dict(leaf_size=2.5), "leaf_size"),
    (dict(leaf_size="big"), "leaf_size"),
    (dict(leaf_size=True), "leaf_size"),
    (dict(split_samples=1), "split_samples"),
    (dict(split_method="random"), "split_method"),
    (dict(split_temperature=0.0), "split_temperature"),
    (dict(split_temperature=-1.0), "split_temperature"),
    (dict(leaf_init="zero"), "leaf_init"),
    (dict(leaf_init="parent", split_method="pca"), "only split_method='agop'"),
])
def test_bad_tree_parameters_refused(client, data, params, message):
    X, y, _, _ = data
    with pytest.raises(ValueError, match=message):
        RFMRegressor(client=client, **params).fit(X, y)


class Killed(Exception):
    """Stands for the fit's process being killed."""


def _until_the_workers_are_idle(client, timeout: float = 60.0) -> None:
    """Wait until no task of a failed fit runs: a leaf task that a worker started as the fit failed, before the
    fit's cancel reached it, runs on to its end in its thread (a thread cannot be stopped), and would be counted
    among the next fit's calls."""
    import time

    deadline = time.monotonic() + timeout
    while any(client.processing().values()) or any(
        client.run(lambda dask_worker: dask_worker.state.executing_count).values()
    ):
        assert time.monotonic() < deadline, "the workers still run the failed fit's tasks"
        time.sleep(0.05)


def test_resumed_tree_equals_uninterrupted(client, data, tree_model, tmp_path, monkeypatch):
    """A fit killed after some of its leaves resumes from the checkpoint with them kept (only the others are
    fitted again) and ends with the uninterrupted fit's model, bit for bit."""
    from rfm_dask.tree import tasks

    X, y, X_test, _ = data
    fit_local, calls, kill = tasks.fit_local, [], [True]
    last = tree_model.n_leaves_ - 1

    def killed_at_last_leaf(rows, *args, **kwargs):
        leaf = int(np.bincount(route(np, np.asarray(rows, dtype=np.float64), tree_model.tree_)).argmax())
        calls.append(leaf)
        if leaf == last and kill:  # the leaves are collected in order: all others are finished by now
            raise Killed
        return fit_local(rows, *args, **kwargs)

    path = tmp_path / "tree.ckpt"
    monkeypatch.setattr(tasks, "fit_local", killed_at_last_leaf)  # the leaves' fits (not the split models')
    with pytest.raises(Killed):
        RFMRegressor(bandwidth=3.0, iters=2, client=client, checkpoint=path, **TREE).fit(X, y)
    assert sorted(calls) == list(range(tree_model.n_leaves_))
    calls.clear()
    kill.clear()
    resumed = RFMRegressor(bandwidth=3.0, iters=2, client=client, checkpoint=path, resume=True, **TREE).fit(X, y)
    assert calls == [last]  # the leaves finished before the kill were kept
    np.testing.assert_array_equal(resumed.predict(X_test), tree_model.predict(X_test))
    def without_times(histories):
        return [[{k: v for k, v in record.items() if k != "seconds"} for record in h] for h in histories]

    assert without_times(resumed.leaf_histories_) == without_times(tree_model.leaf_histories_)


def test_inspect_reports_the_tree(tree_model, tmp_path, capsys):
    from rfm_dask.app.cli import main
    from rfm_dask.app.inspection import inspect_model

    report = inspect_model(tree_model)["tree"]
    assert report["n_leaves"] == 4 and len(report["splits"]) == 3
    assert report["splits"][0]["direction"][0]["feature"] == "x0"
    assert [leaf["rows"] for leaf in report["leaves"]] == tree_model.leaf_sizes_.tolist()
    main(["inspect", str(tree_model.save(tmp_path / "t.rfm"))])
    out = capsys.readouterr().out
    assert "tree of 4 leaves" in out and "node 0: x0" in out and "leaf 3:" in out


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["tree"].update(leaves=[]), "tree must be a dict"),
    (lambda s: s["tree"].update(leaf_sizes=[1, 2, 3]), "tree must be a dict"),
    (lambda s: s["tree"].update(leaf_sizes=[0, 1, 2, 3]), "leaf sizes must be positive"),
    (lambda s: s["tree"]["leaves"][0].update(bandwidth=-1.0), "bandwidth"),
    (lambda s: s["tree"]["leaves"].append(s["tree"]["leaves"][0]) or s["tree"]["leaf_sizes"].append(5), "leaf4_"),
    (lambda s: s.update(n_features_in=5), "n_features_in"),
])
def test_bad_tree_files_refused(tree_model, tmp_path, edit, message):
    import json
    import zipfile

    from rfm_dask.files.model_file import FORMAT_VERSION, ModelFileError

    good = tree_model.save(tmp_path / "good.rfm")
    with zipfile.ZipFile(good) as archive:
        meta = json.loads(archive.read("metadata.json"))
        members = {name: archive.read(name) for name in archive.namelist()}
    assert meta["format_version"] == FORMAT_VERSION == 2
    edit(meta["state"])
    bad = tmp_path / "bad.rfm"
    with zipfile.ZipFile(bad, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, json.dumps(meta) if name == "metadata.json" else data)
    with pytest.raises(ModelFileError, match=message):
        load(bad)


def test_leaf_too_large_for_a_worker_falls_back_to_the_distributed_operator(client, data, tree_model, monkeypatch):
    """A leaf whose dense solve would not fit a worker is fitted by run_rfm over its row blocks (here: every leaf,
    with parent initialisation). The same loop on the same rows, so the same model up to the order of the float64
    sums over blocks (AGOP, column means): predictions agree to float32-kernel noise amplified by the reg=1e-3
    solve, far below the prediction error."""
    X, y, X_test, y_test = data
    params = dict(bandwidth=3.0, iters=2, leaf_init="parent", client=client, **TREE)
    local = RFMRegressor(**params).fit(X, y)
    monkeypatch.setattr(tree_fit, "fits_one_worker", lambda client, n: False)
    distributed = RFMRegressor(**params).fit(X, y)
    np.testing.assert_array_equal(distributed.tree_.directions, local.tree_.directions)
    p, q = distributed.predict(X_test), local.predict(X_test)
    print(f"fallback vs one task: max |diff| / max |pred| = {np.abs(p - q).max() / np.abs(q).max():.2e}")
    np.testing.assert_allclose(p, q, rtol=0, atol=1e-4 * np.abs(q).max())
    np.testing.assert_array_equal(distributed.leaf_best_iters_, local.leaf_best_iters_)


def test_tree_survives_a_worker_killed_among_its_leaves(data, tree_model, monkeypatch):
    """Two worker processes; one is killed (SIGKILL) once two leaves are submitted: the scheduler recomputes what it
    held (its row blocks, finished leaves) and the fit ends with the undisturbed fit's model, bit for bit (every
    task is deterministic, single-BLAS-thread). The undisturbed fit on two worker processes is also the fit on one
    in-process worker of two threads, bit for bit."""
    import os
    import signal

    from rfm_dask.parallel.scheduling import Submitter
    from rfm_dask.tree import tasks

    X, y, X_test, _ = data
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as client:
            params = dict(bandwidth=3.0, iters=2, client=client, **TREE)
            undisturbed = RFMRegressor(**params).fit(X, y)
            killed: list[int] = []

            class KillingSubmitter(Submitter):
                def stream(self, calls, *args, **kwargs):
                    for i, future in enumerate(super().stream(calls, *args, **kwargs)):
                        if i == 2 and future.key.startswith(tasks.leaf_task.__name__) and not killed:
                            victim = sorted(client.scheduler_info()["workers"])[0]
                            pid = client.run(os.getpid, workers=[victim])[victim]
                            os.kill(pid, signal.SIGKILL)
                            killed.append(pid)
                        yield future

            monkeypatch.setattr(tree_leaves, "Submitter", KillingSubmitter)
            disturbed = RFMRegressor(**params).fit(X, y)
    assert killed
    np.testing.assert_array_equal(disturbed.predict(X_test), undisturbed.predict(X_test))
    np.testing.assert_array_equal(undisturbed.predict(X_test), tree_model.predict(X_test))


def _noisy(y: np.ndarray, seed: int) -> np.ndarray:
    """The piecewise targets with unit Gaussian noise: the untuned ridge (1e-3) interpolates it."""
    return y + np.random.default_rng(seed).normal(scale=1.0, size=y.size)


@pytest.mark.parametrize("min_rows", [tree_settings.LEAF_TUNE_MIN_ROWS, 1])
def test_tuned_leaves_start_from_the_trees_pair(client, data, monkeypatch, min_rows):
    """A tuned tree (the default bandwidth and reg "auto") first fits the tuned RFM once on a seeded sample
    (``tree.tuned.tree_pair``); its tuned leaves start from the (bandwidth, reg) of that fit's kept iteration. A leaf
    with fewer than ``LEAF_TUNE_MIN_ROWS`` validation rows (here every leaf, about 25) uses that pair untuned; with
    the minimum lowered to 1 every leaf tunes, with that pair as its untuned candidate. Every leaf is fitted untuned
    as well. The same random_state gives the same model."""
    from collections import Counter

    from rfm_dask.tree import tasks
    from rfm_dask.tuning import UNTUNED_BANDWIDTH, UNTUNED_REG

    monkeypatch.setattr(tree_settings, "LEAF_TUNE_MIN_ROWS", min_rows)
    X, y, X_test, _ = data
    fit_local, fits = tasks.fit_local, []

    def recorded(rows, Y, settings, *args, **kwargs):
        result = fit_local(rows, Y, settings, *args, **kwargs)
        fits.append((settings, result))
        return result

    monkeypatch.setattr(tasks, "fit_local", recorded)  # the tree's tuning fit and the leaves' (not the split models')
    params = dict(leaf_size=250, split_samples=300, iters=2, random_state=0, client=client)
    model = RFMRegressor(**params).fit(X, _noisy(y, 1))
    (first, chosen), leaves = fits[0], [settings for settings, _ in fits[1:]]
    assert first.tune_bandwidth and first.tune_reg
    assert (first.spec.bandwidth, first.reg) == (UNTUNED_BANDWIDTH, UNTUNED_REG)
    pair = (chosen.spec.bandwidth, chosen.reg)
    L = model.n_leaves_
    assert L > 1 and len(leaves) == 2 * L
    # centre_agop="auto" is decided by that fit too: the tuned leaves centre if it did, the untuned ones never
    kept = [h for h in chosen.history if h["iteration"] == chosen.best_iter][-1]
    centred = chosen.best_iter > 0 and kept.get("centred_agop", False)
    tuned_leaf = (*pair, min_rows == 1, min_rows == 1, centred)
    assert first.centre_agop == "auto"
    assert Counter((s.spec.bandwidth, s.reg, s.tune_bandwidth, s.tune_reg, s.centre_agop) for s in leaves) == (
        Counter({tuned_leaf: L}) + Counter({(UNTUNED_BANDWIDTH, UNTUNED_REG, False, False, False): L}))
    if min_rows > 1:  # whichever tree is kept, its leaves used one pair throughout
        used = {(h["bandwidth"], h["reg"]) for history in model.leaf_histories_ for h in history}
        assert used in ({pair}, {(UNTUNED_BANDWIDTH, UNTUNED_REG)})
    again = RFMRegressor(**params).fit(X, _noisy(y, 1))
    np.testing.assert_array_equal(again.predict(X_test), model.predict(X_test))


@pytest.mark.parametrize("bad_pair", [False, True])
def test_tuned_tree_is_kept_only_if_it_beats_the_untuned_tree(client, monkeypatch, bad_pair):
    """The tuned tree is kept only if its validation MSE is below the untuned tree's on all the validation rows and
    on each interleaved part (float64 reference on the two models' predictions); else the model is the untuned tree,
    bit for bit the fit with bandwidth=10, reg=1e-3. On very noisy targets and 2 000 validation rows the tuned tree
    wins; with a useless pair forced on its leaves (L = 0.05, reg = 10) it loses."""
    from dataclasses import replace

    from rfm_dask.tuning import CONSISTENCY_FOLDS

    X, y = piecewise(3000, 0)
    y = y + np.random.default_rng(1).normal(scale=2.0, size=y.size)
    X, y, X_val, y_val = X[:1000], y[:1000], X[1000:], y[1000:]
    if bad_pair:
        monkeypatch.setattr(tree_fit, "tree_pair", lambda *args: replace(
            args[5], spec=replace(args[5].spec, bandwidth=0.05), reg=10.0))
    params = dict(leaf_size=250, split_samples=300, iters=1, random_state=0, client=client)
    model = RFMRegressor(**params).fit(X, y, X_val=X_val, y_val=y_val)
    untuned = RFMRegressor(bandwidth=10.0, reg=1e-3, **params).fit(X, y, X_val=X_val, y_val=y_val)
    F, F_untuned = model.predict(X_val).astype(np.float64), untuned.predict(X_val).astype(np.float64)
    parts = np.arange(y_val.size) % CONSISTENCY_FOLDS
    errors, errors_untuned = (F - y_val) ** 2, (F_untuned - y_val) ** 2
    if not bad_pair:
        assert np.all(model.leaf_regs_ != 1e-3)  # the tuned leaves were kept: the untuned ridge is not theirs
    if np.all(model.leaf_regs_ == 1e-3) and np.all(model.leaf_bandwidths_ == 10.0):
        np.testing.assert_array_equal(F, F_untuned)
    else:  # kept: better as a whole and on each part (mixing the parts as the rule does)
        assert errors.mean() < errors_untuned.mean()
        for j in range(CONSISTENCY_FOLDS):
            assert np.where(parts == j, errors, errors_untuned).mean() < errors_untuned.mean()
    assert bad_pair == np.array_equal(F, F_untuned)


def test_tuned_tree_whose_pair_is_the_untuned_one_fits_its_leaves_once(client, data, monkeypatch):
    """When the tree's pair is the untuned one and no leaf has enough validation rows to tune, the tuned tree is the
    untuned tree: its leaves are fitted once, and the model is bit for bit the fit with bandwidth=10, reg=1e-3."""
    from rfm_dask.tree import tasks

    X, y, X_test, _ = data
    fit_local, pairs = tasks.fit_local, []

    def recorded(rows, Y, settings, *args, **kwargs):
        result = fit_local(rows, Y, settings, *args, **kwargs)
        pairs.append((result.spec.bandwidth, result.reg, settings.tune_reg))
        return result

    monkeypatch.setattr(tasks, "fit_local", recorded)
    params = dict(leaf_size=250, split_samples=300, iters=1, random_state=0, client=client)
    model = RFMRegressor(**params).fit(X, y)
    assert pairs[0] == (10.0, 1e-3, True)  # the tree's tuning fit kept the untuned pair on these noise-free targets
    assert len(pairs) == 1 + model.n_leaves_
    untuned = RFMRegressor(bandwidth=10.0, reg=1e-3, **params).fit(X, y)
    np.testing.assert_array_equal(model.predict(X_test), untuned.predict(X_test))


def test_resumed_tuned_tree_equals_uninterrupted(client, data, tmp_path, monkeypatch):
    """A tuned tree killed at its last tuned leaf (the tuned leaves are collected first) resumes, choosing the
    leaves' pair again (the same) and fitting only the unfinished leaves (that one and the untuned leaves), to the
    model of an uninterrupted fit, bit for bit."""
    from rfm_dask.tree import tasks

    X, y, X_test, _ = data
    y = _noisy(y, 1)
    params = dict(leaf_size=250, split_samples=300, iters=1, random_state=0, client=client)
    fit_local, calls, kill = tasks.fit_local, [], [False]
    last = []

    def killed_at_last_leaf(rows, Y, settings, *args, **kwargs):
        if settings.tune_reg:  # the tree's tuning fit (leaves with this few validation rows do not tune)
            calls.append("tuning")
        else:
            calls.append(int(np.bincount(route(np, np.asarray(rows, dtype=np.float64), tree_of[0])).argmax()))
            if kill[0] and calls[-1] == last[0]:  # the leaves are collected in order: all others are finished by now
                raise Killed
        return fit_local(rows, Y, settings, *args, **kwargs)

    tree_of = [RFMRegressor(bandwidth=10.0, reg=1e-3, **params).fit(X, y).tree_]  # the same tree
    monkeypatch.setattr(tasks, "fit_local", killed_at_last_leaf)
    reference = RFMRegressor(**params).fit(X, y)
    L = reference.n_leaves_
    assert calls[0] == "tuning" and sorted(calls[1:]) == sorted(2 * list(range(L)))  # tuned and untuned leaves
    calls.clear()
    kill[0], last[:] = True, [L - 1]
    path = tmp_path / "tuned.ckpt"
    with pytest.raises(Killed):
        RFMRegressor(checkpoint=path, **params).fit(X, y)
    _until_the_workers_are_idle(client)  # the untuned leaves submitted after the killed one
    calls.clear()
    kill[0] = False
    resumed = RFMRegressor(checkpoint=path, resume=True, **params).fit(X, y)
    # the leaves' pair chosen again; the tuned leaves finished before the kill kept, the others fitted
    assert calls[0] == "tuning" and sorted(calls[1:]) == sorted([L - 1, *range(L)])
    np.testing.assert_array_equal(resumed.predict(X_test), reference.predict(X_test))
    assert (resumed.leaf_bandwidths_.tolist(), resumed.leaf_regs_.tolist()) == (reference.leaf_bandwidths_.tolist(),
                                                                              reference.leaf_regs_.tolist())
