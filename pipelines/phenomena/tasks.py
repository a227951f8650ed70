"""Seeded synthetic tasks for the phenomena of DESIGN section 4, and the evidence each one reports about M.

Every generator takes its config table and returns a :class:`Task`: train, validation and test rows drawn from one
seeded generator (validation and test rows are never used for fitting), whether it is a classification or a
regression task, and an ``evidence`` function that turns a feature matrix M into the numbers that say whether the
phenomenon showed up (mass of M on the relevant coordinates, block-circulant fit, effective rank...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipelines.datasets import low_rank_golden


@dataclass
class Task:
    name: str
    kind: str
    classification: bool
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    description: str
    evidence: Callable[[np.ndarray], dict]
    facts: dict = field(default_factory=dict)  # task-level numbers that do not depend on a model
    display: Callable[[np.ndarray], tuple[np.ndarray, str]] | None = None  # M in the basis the task is best seen in
    block: int | None = None  # draw separating lines every ``block`` rows/columns in M images

    @property
    def sizes(self) -> dict:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test),
                "features": int(self.X_train.shape[1])}


# -- helpers on M -------------------------------------------------------------------------------------------------
def _diag(M: np.ndarray) -> np.ndarray:
    return np.asarray(M if M.ndim == 1 else np.diag(M), dtype=np.float64)


def diag_mass(M: np.ndarray, index: np.ndarray) -> float:
    """Share of trace(M) on the coordinates ``index``."""
    dg = _diag(M)
    return float(dg[index].sum() / dg.sum()) if dg.sum() > 0 else float("nan")


def top_diag(M: np.ndarray, k: int) -> list[int]:
    """The k coordinates with the largest diagonal entries of M, largest first."""
    return [int(i) for i in np.argsort(_diag(M))[::-1][:k]]


def subspace_share(M: np.ndarray, basis: np.ndarray) -> float:
    """Share of trace(M) inside the span of the orthonormal columns ``basis`` (d, k): trace(B^T M B) / trace(M)."""
    M = np.diag(M) if M.ndim == 1 else M
    return float(np.trace(basis.T @ M @ basis) / np.trace(M))


def effective_rank(M: np.ndarray) -> float:
    """Participation ratio of the eigenvalues, (sum l)^2 / sum l^2: d for M = I, 1 for a rank-one M."""
    vals = np.clip(_diag(M) if M.ndim == 1 else np.linalg.eigvalsh((M + M.T) / 2), 0.0, None)
    return float(vals.sum() ** 2 / (vals**2).sum()) if vals.any() else float("nan")


def circulant_fit(B: np.ndarray, skip_diagonal: bool = False) -> float:
    """R^2 of the best circulant approximation of a square block (entries averaged along wrapped diagonals
    (i - j) mod p). With ``skip_diagonal`` the main diagonal is left out (an identity block is trivially circulant);
    NaN if the entries considered do not vary."""
    p = B.shape[0]
    i, j = np.indices(B.shape)
    keep = (i != j) if skip_diagonal else np.ones(B.shape, dtype=bool)
    k = ((i - j) % p)[keep]
    v = B[keep]
    means = np.bincount(k, v, minlength=p) / np.maximum(np.bincount(k, minlength=p), 1)
    total = ((v - v.mean()) ** 2).sum()
    return float(1.0 - ((v - means[k]) ** 2).sum() / total) if total > 1e-12 * max(1.0, (v**2).sum()) else float("nan")


def block_circulant_r2(M: np.ndarray, p: int) -> float:
    """R^2 of the best block-circulant approximation of M (every p x p block replaced by its averages along wrapped
    diagonals (i - j) mod p), relative to M's variance around its mean. M = I scores 1: read it together with
    the off-diagonal share."""
    P = np.empty_like(M, dtype=np.float64)
    i, j = np.indices((p, p))
    k = (i - j) % p
    for r in range(0, M.shape[0], p):
        for c in range(0, M.shape[1], p):
            B = M[r:r + p, c:c + p]
            P[r:r + p, c:c + p] = (np.bincount(k.ravel(), B.ravel(), minlength=p) / p)[k]
    return float(1.0 - ((M - P) ** 2).sum() / ((M - M.mean()) ** 2).sum())


def _split(rng: np.random.Generator, n: int, n_train: int, n_val: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


# -- 1. low-rank golden task --------------------------------------------------------------------------------------
def low_rank(name: str, cfg: dict) -> Task:
    """The reference notebook's task (``pipelines.datasets.low_rank_golden``): train and test rows exactly as
    published; the validation rows are extra rows drawn from ``seed + 1000``."""
    seed = int(cfg["seed"])
    X_train, y_train, X_test, y_test = low_rank_golden(int(cfg["n_train"]), int(cfg["n_test"]), int(cfg["d"]), seed)
    X_val, y_val, _, _ = low_rank_golden(int(cfg["n_val"]), 0, int(cfg["d"]), seed + 1000)
    relevant = np.array([0, 1, 5])

    def evidence(M: np.ndarray) -> dict:
        return {"top3_diag": top_diag(M, 3), "top3_is_0_1_5": set(top_diag(M, 3)) == {0, 1, 5},
                "diag_mass_0_1_5": diag_mass(M, relevant)}

    return Task(
        name, "low_rank", False, X_train, y_train, X_val, y_val, X_test, y_test,
        f"x ~ N(0, 0.25 I_{cfg['d']}), y = x0 x1 1[x5 > 0] (golden task, seed {seed})",
        evidence,
        facts={"uniform_diag_mass_0_1_5": 3 / int(cfg["d"]),
               "published_test_mse_by_iteration": [0.0123, 0.0063, 0.0032, 0.0024, 0.0021, 0.0020]},
    )


# -- 2. grokking modular addition ---------------------------------------------------------------------------------
def modular_addition(p: int) -> tuple[np.ndarray, np.ndarray]:
    """All p^2 pairs (a, b): X = one-hot(a) ⊕ one-hot(b) (p^2, 2p) float32, y = (a + b) mod p."""
    a, b = np.divmod(np.arange(p * p), p)
    eye = np.eye(p, dtype=np.float32)
    return np.concatenate([eye[a], eye[b]], axis=1), (a + b) % p


def grokking(name: str, cfg: dict) -> Task:
    """(a + b) mod p: ``train_fraction`` of the p^2 pairs train, ``val_fraction`` validate, the rest test."""
    p = int(cfg["p"])
    X, y = modular_addition(p)
    rng = np.random.default_rng(int(cfg["seed"]))
    tr, va, te = _split(rng, p * p, int(round(float(cfg["train_fraction"]) * p * p)),
                        int(round(float(cfg["val_fraction"]) * p * p)))

    def evidence(M: np.ndarray) -> dict:
        if M.ndim == 1:
            return {}
        off = np.abs(M - np.diag(np.diag(M)))
        fits = {"block_circulant_r2": block_circulant_r2(M, p),
                "off_diagonal_share": float(off.sum() / np.abs(M).sum())}
        # per block; in the diagonal blocks the main diagonal is left out (an identity block is trivially circulant)
        blocks = {"aa": (M[:p, :p], True), "ab": (M[:p, p:], False), "ba": (M[p:, :p], False), "bb": (M[p:, p:], True)}
        fits.update({f"circulant_r2_{k}": circulant_fit(B, skip_diagonal=diag) for k, (B, diag) in blocks.items()})
        for k, (B, diag) in blocks.items():
            spread = np.std(B[~np.eye(p, dtype=bool)] if diag else B)
            fits[f"sd_{k}" + ("_off_main_diagonal" if diag else "")] = float(spread)
        return fits

    return Task(
        name, "grokking", True, X[tr], y[tr], X[va], y[va], X[te], y[te],
        f"(a + b) mod {p}, x = one-hot(a) ⊕ one-hot(b) ({2 * p} dims); {len(tr)} train / {len(va)} val / "
        f"{len(te)} test pairs (seed {cfg['seed']})",
        evidence,
        facts={"chance_accuracy": 1.0 / p},
        block=p,
    )


# -- 3. sparse parity ---------------------------------------------------------------------------------------------
def sparse_parity(name: str, cfg: dict) -> Task:
    """x uniform on {-1, 1}^d, label 1[prod of x over a fixed seeded support of k coordinates > 0]."""
    d, k = int(cfg["d"]), int(cfg["k"])
    rng = np.random.default_rng(int(cfg["seed"]))
    support = np.sort(rng.choice(d, k, replace=False))
    n_train, n_val, n_test = int(cfg["n_train"]), int(cfg["n_val"]), int(cfg["n_test"])
    X = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(n_train + n_val + n_test, d))
    y = (np.prod(X[:, support], axis=1) > 0).astype(np.int64)
    a, b = n_train, n_train + n_val

    def evidence(M: np.ndarray) -> dict:
        return {"support_diag_mass": diag_mass(M, support), "top_k_diag": top_diag(M, k),
                "top_k_is_support": set(top_diag(M, k)) == set(support.tolist())}

    return Task(
        name, "parity", True, X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:],
        f"x uniform on {{±1}}^{d}, y = 1[x_S product > 0], S = {support.tolist()} (k = {k}, seed {cfg['seed']})",
        evidence,
        facts={"support": support.tolist(), "uniform_support_mass": k / d},
    )


# -- 4. feature learning can hurt ---------------------------------------------------------------------------------
def sphere_gaussian_function(name: str, cfg: dict) -> Task:
    """x uniform on the unit sphere S^{d-1}; y a draw of an isotropic Gaussian random function, approximated by
    ``n_features`` random Fourier features: y = sqrt(2/R) sum_r a_r cos(w_r . x + b_r), a_r ~ N(0, 1),
    w_r ~ N(0, omega^2 I_d), b_r ~ U[0, 2 pi) (covariance exp(-omega^2 |x - x'|^2 / 2) as R grows: no preferred
    direction), plus optional Gaussian label noise."""
    d, R, omega = int(cfg["d"]), int(cfg["n_features"]), float(cfg["omega"])
    rng = np.random.default_rng(int(cfg["seed"]))
    W = rng.normal(scale=omega, size=(R, d))
    b = rng.uniform(0.0, 2 * np.pi, R)
    a = rng.normal(size=R) * np.sqrt(2.0 / R)
    n_train, n_val, n_test = int(cfg["n_train"]), int(cfg["n_val"]), int(cfg["n_test"])
    X = rng.normal(size=(n_train + n_val + n_test, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    phase = X @ W.T + b
    y = np.cos(phase) @ a + float(cfg["noise"]) * rng.normal(size=X.shape[0])
    # the target's own AGOP on the sphere (tangential gradients at the test points): how isotropic the target is
    Xt = X[n_train + n_val:]
    grad = -(np.sin(phase[n_train + n_val:]) * a) @ W
    grad -= np.sum(grad * Xt, axis=1, keepdims=True) * Xt
    target_agop = grad.T @ grad / len(Xt)
    X = X.astype(np.float32)
    a_, b_ = n_train, n_train + n_val

    def evidence(M: np.ndarray) -> dict:
        return {"effective_rank": effective_rank(M), "effective_rank_over_d": effective_rank(M) / d}

    return Task(
        name, "hurt", False, X[:a_], y[:a_], X[a_:b_], y[a_:b_], X[b_:], y[b_:],
        f"x uniform on S^{d - 1}, y = Gaussian random function ({R} random Fourier features, omega = {omega:g}), "
        f"noise {float(cfg['noise']):g} (seed {cfg['seed']})",
        evidence,
        facts={"target_agop_effective_rank": effective_rank(target_agop), "d": d,
               "test_target_variance": float(np.var(y[b_:]))},
    )


# -- 5. emergence from input structure ----------------------------------------------------------------------------
def hidden_patterns(name: str, cfg: dict) -> Task:
    """Dictionary model after Shi, Wei and Liang (2022): D = d orthonormal patterns (columns of a seeded random
    orthogonal matrix Q); each input is x = Q phi + noise with a hidden presence vector phi in {0, 1}^d. The first
    k patterns are class-relevant: phi_1..k uniform in {0, 1}^k, and the label is the parity of how many of them are
    present. The other d - k patterns are background, each present independently with probability
    ``background_prob``. Gaussian noise of total norm ~``noise`` is added."""
    d, k = int(cfg["d"]), int(cfg["k"])
    rng = np.random.default_rng(int(cfg["seed"]))
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    n_train, n_val, n_test = int(cfg["n_train"]), int(cfg["n_val"]), int(cfg["n_test"])
    n = n_train + n_val + n_test
    phi = (rng.random((n, d)) < float(cfg["background_prob"])).astype(np.float64)
    phi[:, :k] = rng.integers(0, 2, size=(n, k))
    y = (phi[:, :k].sum(axis=1) % 2).astype(np.int64)
    X = (phi @ Q.T + float(cfg["noise"]) / np.sqrt(d) * rng.normal(size=(n, d))).astype(np.float32)
    a, b = n_train, n_train + n_val
    relevant = Q[:, :k]

    def evidence(M: np.ndarray) -> dict:
        Md = np.diag(M) if M.ndim == 1 else M
        in_patterns = np.diag(Q.T @ Md @ Q)
        return {"relevant_subspace_share": subspace_share(M, relevant),
                "top_k_patterns": [int(i) for i in np.argsort(in_patterns)[::-1][:k]]}

    def display(M: np.ndarray) -> tuple[np.ndarray, str]:
        Md = np.diag(M) if M.ndim == 1 else M
        return Q.T @ Md @ Q, "Qᵀ M Q (pattern basis; patterns 0..k-1 relevant)"

    return Task(
        name, "emergence", True, X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:],
        f"x = Q phi + noise, d = {d} orthonormal patterns, label = parity of the {k} relevant patterns present, "
        f"background patterns present w.p. {cfg['background_prob']}, noise {cfg['noise']} (seed {cfg['seed']})",
        evidence,
        facts={"uniform_relevant_share": k / d},
        display=display,
    )


def pattern_patches(name: str, cfg: dict) -> Task:
    """Patch variant: x is ``patches`` patches of dimension q; the patterns are the columns of a seeded random
    orthogonal q x q matrix Q, the first ``classes`` of them class-relevant, the rest background. An input of class c
    holds pattern c in one uniformly chosen patch and a uniformly drawn background pattern in every other patch, plus
    Gaussian noise of norm ~``noise`` per patch. Fixed features see mostly background; the relevant subspace is
    span{e_p ⊗ Q[:, c]}, P x C of the P x q dimensions."""
    P, q, C = int(cfg["patches"]), int(cfg["q"]), int(cfg["classes"])
    rng = np.random.default_rng(int(cfg["seed"]))
    Q = np.linalg.qr(rng.normal(size=(q, q)))[0]
    n_train, n_val, n_test = int(cfg["n_train"]), int(cfg["n_val"]), int(cfg["n_test"])
    n = n_train + n_val + n_test
    y = rng.integers(0, C, n)
    which = rng.integers(C, q, size=(n, P))
    which[np.arange(n), rng.integers(0, P, n)] = y
    X = Q.T[which] + float(cfg["noise"]) / np.sqrt(q) * rng.normal(size=(n, P, q))
    X = X.reshape(n, P * q).astype(np.float32)
    a, b = n_train, n_train + n_val
    big = np.kron(np.eye(P), Q)  # (I_P ⊗ Q): pattern basis in every patch
    relevant = np.kron(np.eye(P), Q[:, :C])
    pooled = np.kron(np.ones((P, 1)) / np.sqrt(P), Q[:, :C])  # pattern c summed over patches

    def evidence(M: np.ndarray) -> dict:
        return {"relevant_subspace_share": subspace_share(M, relevant),
                "position_pooled_share": subspace_share(M, pooled), "effective_rank": effective_rank(M)}

    def display(M: np.ndarray) -> tuple[np.ndarray, str]:
        Md = np.diag(M) if M.ndim == 1 else M
        return big.T @ Md @ big, "M in the per-patch pattern basis (first C of every q relevant)"

    return Task(
        name, "patches", True, X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:],
        f"{P} patches x {q} dims; class c = pattern c (of {C} relevant) in one random patch, background patterns "
        f"(the other {q - C}) elsewhere, noise {cfg['noise']} (seed {cfg['seed']})",
        evidence,
        facts={"uniform_relevant_share": C / q, "uniform_position_pooled_share": C / (P * q)},
        display=display,
        block=q,
    )


GENERATORS: dict[str, Callable[[str, dict], Task]] = {
    "low_rank": low_rank,
    "grokking": grokking,
    "parity": sparse_parity,
    "hurt": sphere_gaussian_function,
    "emergence": hidden_patterns,
    "patches": pattern_patches,
}


def make_task(name: str, cfg: dict[str, Any]) -> Task:
    kind = cfg.get("kind", name)
    if kind not in GENERATORS:
        raise SystemExit(f"task [{name}]: unknown kind {kind!r} (known: {', '.join(GENERATORS)})")
    return GENERATORS[kind](name, cfg)
