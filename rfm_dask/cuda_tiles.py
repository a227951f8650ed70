"""Fused kernel products on the GPU: out = K(X, C) V with the kernel tile kept on chip (CuPy RawModule).

Each thread block takes BM rows of X and walks over a contiguous range of BN-centre tiles. For every tile it stages
BK features of its rows and centres at a time in shared memory; each thread accumulates the squared distances of a
TM x TN micro-tile of (row, centre) pairs in float32 registers from the difference form sum_k (x_k - c_k)^2 (no
cancellation, so the self-term and duplicate rows get exactly 0 and no near-pair fix-up is needed), applies the
kernel, and adds k * V[centre] to per-row float64 sums in registers. The BX threads that share rows then add their
sums with a fixed butterfly of warp shuffles. When the centres are split over several blocks (few rows), each block
writes a float64 partial sum per (split, row, column) and a second kernel adds the splits in order; with one split
the block writes the result. No atomics, and a launch shape that depends on the array shapes only, so every result
is bitwise reproducible, on any device. The b x m kernel tile never exists in global memory.

CuPy is imported inside the functions only (importing rfm_dask creates no CUDA context).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .kernel_spec import KernelSpec

BX, BY = 16, 16  # threads per block along centres (one half-warp) and along rows
TM, TN = 4, 8  # rows and centres per thread (TN as two groups of 4, BN / 2 apart, for conflict-free loads)
BM, BN = BY * TM, BX * TN  # rows per block (64) and centres per tile (128)
BK = 16  # features per shared-memory stage
COLUMNS = 4  # columns of V per launch; wider V is done in launches of COLUMNS columns
MAX_COLUMNS = 16  # wider V takes the unfused path (its GEMM with V amortises the kernel tile)
#: Blocks a launch aims for (row tiles x centre splits). A constant, not the device's SM count, so that results do
#: not depend on the device.
TARGET_BLOCKS = 1024
REDUCE_THREADS = 256

#: Template argument of the fused kernel for each kernel formula.
LAPLACE_Q1, LAPLACE, GAUSSIAN = 0, 1, 2

_SOURCE = r"""
static_assert(BX <= 32 && (BX & (BX - 1)) == 0, "the BX threads sharing rows must sit in one warp");
static_assert(TM == 4 && TN == 8 && BN == 8 * BX, "micro-tile loads are float4: 4 rows, 2 x 4 centres");

// Kernel value from a squared distance (float32, as the unfused NumPy/CuPy path computes it).
template <int KIND>
__device__ __forceinline__ float kernel_value(const float d2, const float scale, const float half_q) {
    if (KIND == 0) return expf(sqrtf(d2) * scale);         // Laplace q = 1: scale = -1/L
    if (KIND == 1) return expf(powf(d2, half_q) * scale);  // Laplace: r^q = d2^(q/2), scale = -(1/L)^q
    return expf(d2 * scale);                                // Gaussian: scale = -1/(2 L^2)
}

// Local centre index of this thread's j-th centre: two groups of 4, BN/2 apart, so that the 16 threads of a
// half-warp read 256 contiguous bytes per float4 load.
__device__ __forceinline__ int centre_of(const int tx, const int j) {
    return (j < 4 ? 0 : BN / 2) + tx * 4 + (j & 3);
}

// One feature k of the staged tiles into the thread's TM x TN squared distances.
__device__ __forceinline__ void accumulate(float (*xs)[BM + PAD], float (*cs)[BN + PAD], const int k,
                                           const int tx, const int ty, float (&acc)[TM][TN]) {
    const float4 xv = *reinterpret_cast<const float4*>(&xs[k][ty * TM]);
    const float4 ca = *reinterpret_cast<const float4*>(&cs[k][tx * 4]);
    const float4 cb = *reinterpret_cast<const float4*>(&cs[k][BN / 2 + tx * 4]);
    const float x[TM] = {xv.x, xv.y, xv.z, xv.w};
    const float c[TN] = {ca.x, ca.y, ca.z, ca.w, cb.x, cb.y, cb.z, cb.w};
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const float t = x[i] - c[j];
            acc[i][j] = fmaf(t, t, acc[i][j]);
        }
    }
}

// out[(split * rows + row) * ldo + out_col + l] = sum over this split's centres j of k(X[row], C[j]) V[j, col0 + l]
// for l < ncols. Grid: (row tiles, splits); block: (BX, BY). X (rows, d), C (centres, d) float32 and V (centres, ldv)
// float64 are C-contiguous. out is the (splits, rows, NC) partial sums, or with one split the result itself.
template <int KIND>
__global__ void __launch_bounds__(BX * BY, 2)
fused_matvec(const float* __restrict__ X, const float* __restrict__ C, const double* __restrict__ V,
             double* __restrict__ out, const int rows, const int centres, const int d, const int ldv,
             const int col0, const int ncols, const int tiles_per_split, const float scale, const float half_q,
             const int ldo, const int out_col) {
    __shared__ __align__(16) float xs[BK][BM + PAD];
    __shared__ __align__(16) float cs[BK][BN + PAD];
    __shared__ double vs[NC][BN];

    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * BX + tx;
    const int row0 = blockIdx.x * BM;
    const int centre_tiles = (centres + BN - 1) / BN;
    const int first = blockIdx.y * tiles_per_split;
    const int last = min(first + tiles_per_split, centre_tiles);

    double part[TM][NC];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int l = 0; l < NC; ++l) part[i][l] = 0.0;

    for (int tile = first; tile < last; ++tile) {
        const int c0 = tile * BN;
        __syncthreads();  // every thread is done with the previous tile's vs, xs and cs
        for (int e = tid; e < NC * BN; e += BX * BY) {
            const int l = e / BN, j = e % BN;
            vs[l][j] = (c0 + j < centres && l < ncols) ? V[(long long)(c0 + j) * ldv + col0 + l] : 0.0;
        }
        __syncthreads();

        float acc[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

        for (int k0 = 0; k0 < d; k0 += BK) {
            for (int e = tid; e < BM * BK; e += BX * BY) {
                const int r = e / BK, k = e % BK;
                xs[k][r] = (row0 + r < rows && k0 + k < d) ? X[(long long)(row0 + r) * d + k0 + k] : 0.0f;
            }
            for (int e = tid; e < BN * BK; e += BX * BY) {
                const int j = e / BK, k = e % BK;
                cs[k][j] = (c0 + j < centres && k0 + k < d) ? C[(long long)(c0 + j) * d + k0 + k] : 0.0f;
            }
            __syncthreads();
            const int kn = min(BK, d - k0);
            if (kn == BK) {
#pragma unroll
                for (int k = 0; k < BK; ++k) accumulate(xs, cs, k, tx, ty, acc);
            } else {
                for (int k = 0; k < kn; ++k) accumulate(xs, cs, k, tx, ty, acc);
            }
            __syncthreads();
        }

        // Centres past the end have V = 0 in vs, rows past the end are not written: no masks needed here.
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int jl = centre_of(tx, j);
            double v[NC];
#pragma unroll
            for (int l = 0; l < NC; ++l) v[l] = vs[l][jl];
#pragma unroll
            for (int i = 0; i < TM; ++i) {
                const double kij = (double)kernel_value<KIND>(acc[i][j], scale, half_q);
#pragma unroll
                for (int l = 0; l < NC; ++l) part[i][l] = fma(kij, v[l], part[i][l]);
            }
        }
    }

    // The BX threads of a half-warp hold the same rows: add their sums in a fixed butterfly order.
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int l = 0; l < NC; ++l)
#pragma unroll
            for (int offset = BX / 2; offset > 0; offset /= 2)
                part[i][l] += __shfl_xor_sync(0xffffffffu, part[i][l], offset);

    const long long base = (long long)blockIdx.y * rows;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int l = 0; l < NC; ++l) {
            const int row = row0 + ty * TM + i;
            if ((i * NC + l) % BX == tx && row < rows && l < ncols) out[(base + row) * ldo + out_col + l] = part[i][l];
        }
}

// out[row, col0 + l] = sum over splits s, in order, of partial[s, row, l]. One thread per (row, l).
extern "C" __global__ void sum_splits(const double* __restrict__ partial, double* __restrict__ out,
                                      const int splits, const int rows, const int ncols, const int ldo,
                                      const int col0) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)rows * ncols) return;
    const int row = (int)(e / ncols), l = (int)(e % ncols);
    double s = 0.0;
    for (int k = 0; k < splits; ++k) s += partial[((long long)k * rows + row) * NC + l];
    out[(long long)row * ldo + col0 + l] = s;
}
"""

_DEFINES = {"BX": BX, "BY": BY, "TM": TM, "TN": TN, "BM": BM, "BN": BN, "BK": BK, "NC": COLUMNS, "PAD": 4}
_KINDS = (LAPLACE_Q1, LAPLACE, GAUSSIAN)


def source() -> str:
    """The CUDA source of the fused kernels, with the tile sizes defined."""
    return "".join(f"#define {k} {v}\n" for k, v in _DEFINES.items()) + _SOURCE


@functools.cache
def _module(device: int) -> Any:
    import cupy

    with cupy.cuda.Device(device):
        return cupy.RawModule(code=source(), name_expressions=[f"fused_matvec<{k}>" for k in _KINDS])


def compiled(kind: int) -> tuple[Any, Any]:
    """(the fused product for kernel formula ``kind``, the split reduction), compiled once per device."""
    import cupy

    module = _module(cupy.cuda.runtime.getDevice())
    return module.get_function(f"fused_matvec<{kind}>"), module.get_function("sum_splits")


def kernel_constants(spec: KernelSpec) -> tuple[int, float, float]:
    """(kernel formula, scale, q / 2) for the fused kernel; the scale is what the unfused path multiplies by.

    The fused tile computes L2 distances: the L1 kernel has no fused route (``kernels.gpu_route``).
    """
    if spec.l1:
        raise ValueError("the fused CUDA tile computes L2 distances; the L1 kernel runs on the tiled CuPy path")
    if spec.kind == "gaussian":
        return GAUSSIAN, -0.5 / spec.bandwidth**2, 0.0
    if spec.exponent == 1.0:
        return LAPLACE_Q1, -1.0 / spec.bandwidth, 0.0
    return LAPLACE, -((1.0 / spec.bandwidth) ** spec.exponent), 0.5 * spec.exponent


def launch_plan(rows: int, centres: int) -> tuple[int, int, int]:
    """(row tiles, centre splits, centre tiles per split) for a (rows, centres) product.

    Splitting the centres gives a launch enough blocks when there are few rows; it depends on the shapes only.
    """
    row_tiles, centre_tiles = -(-rows // BM), -(-centres // BN)
    per_split = -(-centre_tiles // min(centre_tiles, -(-TARGET_BLOCKS // row_tiles)))
    return row_tiles, -(-centre_tiles // per_split), per_split


def handles(Xt: Any, Ct: Any, V: Any) -> bool:
    """Whether the fused kernel takes this product: float32 rows and centres, V (m, c) with c <= MAX_COLUMNS."""
    return Xt.dtype == np.float32 and Ct.dtype == np.float32 and V.ndim == 2 and V.shape[1] <= MAX_COLUMNS


def matvec(Xt: Any, Ct: Any, V: Any, spec: KernelSpec) -> Any:
    """K(X, C) @ V for transformed rows Xt (b, d) and centres Ct (m, d), float32 CuPy arrays, and V (m, c) with
    c <= MAX_COLUMNS: returns (b, c) float64, computed without the (b, m) kernel tile in memory."""
    import cupy

    X, C = (cupy.ascontiguousarray(a, dtype=cupy.float32) for a in (Xt, Ct))
    V = cupy.ascontiguousarray(V, dtype=cupy.float64)
    (rows, d), centres, width = X.shape, C.shape[0], V.shape[1]
    if C.shape[1] != d or V.shape[0] != centres:
        raise ValueError(f"shapes do not match: X {X.shape}, C {C.shape}, V {V.shape}")
    out = cupy.zeros((rows, width), dtype=cupy.float64)
    if rows == 0 or centres == 0 or width == 0:
        return out
    kind, scale, half_q = kernel_constants(spec)
    product, reduce = compiled(kind)
    row_tiles, splits, per_split = launch_plan(rows, centres)
    partial = cupy.empty((splits, rows, COLUMNS), dtype=cupy.float64) if splits > 1 else None
    i32 = np.int32
    for col0 in range(0, width, COLUMNS):
        ncols = min(COLUMNS, width - col0)
        # one split writes the result directly; several write partial sums, added in split order afterwards
        target = (out, width, col0) if partial is None else (partial, COLUMNS, 0)
        product(
            (row_tiles, splits), (BX, BY),
            (X, C, V, target[0], i32(rows), i32(centres), i32(d), i32(width), i32(col0), i32(ncols), i32(per_split),
             np.float32(scale), np.float32(half_q), i32(target[1]), i32(target[2])),
        )
        if partial is not None:
            reduce(
                (-(-rows * ncols // REDUCE_THREADS),), (REDUCE_THREADS,),
                (partial, out, i32(splits), i32(rows), i32(ncols), i32(width), i32(col0)),
            )
    return out


def rmatvec(Xt: Any, Ct: Any, U: Any, spec: KernelSpec) -> Any:
    """K(X, C)^T U for Xt (b, d), Ct (m, d) float32 and U (b, c): returns (m, c) float64.

    K(X, C)^T = K(C, X) bitwise (the difference form is symmetric), so this is ``matvec`` with the roles swapped.
    """
    return matvec(Ct, Xt, U, spec)


def gram_matvec(Xt: Any, Ct: Any, W: Any, spec: KernelSpec) -> Any:
    """K^T (K W) with K = K(X, C) for Xt (b, d), Ct (m, d) float32 and W (m, c): returns (m, c) float64.

    Two fused passes (each pair's distance is computed twice) and a (b, c) float64 intermediate.
    """
    return rmatvec(Xt, Ct, matvec(Xt, Ct, W, spec), spec)


class _TF32:
    """Counts the threads inside ``tf32_gemms`` and switches CuPy's float32 GEMMs to TF32 while there are any."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved: Any = None

    def enter(self) -> None:
        from cupy._core import _routines_linalg as linalg

        with self.lock:
            if self.users == 0:
                self.saved = linalg.get_compute_type(np.float32)
                linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
            self.users += 1

    def exit(self) -> None:
        from cupy._core import _routines_linalg as linalg

        with self.lock:
            self.users -= 1
            if self.users == 0:
                linalg.set_compute_type(np.float32, self.saved)


_tf32 = _TF32()


@contextmanager
def tf32_gemms() -> Iterator[None]:
    """CuPy float32 matrix products (cuBLAS, CUBLAS_COMPUTE_32F_FAST_TF32) in TF32 on tensor cores while active.

    This is what the environment variable CUPY_TF32=1 selects for a whole process, set here through CuPy's
    compute-type switch (``set_compute_type`` in ``cupy._core._routines_linalg``, not a public API). The switch is
    process-wide: float32 products of other threads of the process run in TF32 too while any thread is inside.
    Needs compute capability 8.0 or newer (CuPy warns and keeps FP32 below).
    """
    _tf32.enter()
    try:
        yield
    finally:
        _tf32.exit()
