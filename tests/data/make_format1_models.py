"""How the format-1 model files in this folder were made (run once, by the code of the commit that added them).

    cd <repo> && PYTHONPATH=$PWD python tests/data/make_format1_models.py

Writes ``format1_<name>.rfm`` and ``format1_expected.npz`` (the test rows and each model's predictions as that
code computed them). ``tests/test_model_file.py::test_format1_files_still_load`` loads them: every later change of
the model format must keep reading these files. Do not regenerate them after a format change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rfm_dask import RFMClassifier, RFMRegressor

HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = np.random.default_rng(2026)
    X = rng.normal(size=(90, 5)).astype(np.float32)
    X_test = rng.normal(size=(20, 5)).astype(np.float32)
    labels = np.array(["ant", "bee", "cow"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)]
    Y = np.column_stack([X[:, 0] * X[:, 1], np.sin(X[:, 2]) + X[:, 3]])
    models = {
        "classifier": RFMClassifier(iters=2, bandwidth=3.0, reg=1e-2, diag=True, random_state=0).fit(X, labels),
        "regressor": RFMRegressor(iters=2, bandwidth=3.0, reg=1e-2, random_state=0).fit(X, Y[:, 0]),
        "multi_output_regressor": RFMRegressor(
            iters=1, kernel="gaussian", bandwidth=2.0, reg=1e-2, feature_update="fact", random_state=0
        ).fit(X, Y),
    }
    for name, model in models.items():
        model.save(HERE / f"format1_{name}.rfm", overwrite=True)
    clf = models["classifier"]
    np.savez(
        HERE / "format1_expected.npz",
        X_test=X_test,
        classifier_labels=clf.predict(X_test),
        classifier_proba=clf.predict_proba(X_test),
        regressor=models["regressor"].predict(X_test),
        multi_output_regressor=models["multi_output_regressor"].predict(X_test),
    )


if __name__ == "__main__":
    main()
