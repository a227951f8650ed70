"""Pure NumPy/CuPy math over an array namespace ``xp``: kernels and their tiles (``kernels``, the fused CUDA tile in
``cuda_tiles``), input gradients with the AGOP and FACT sums (``gradients``), the feature-matrix update
(``feature_matrix``), target scaling and metrics. No Dask, no configuration."""
