"""The cluster: row blocks on the workers (``row_blocks``, ``placement``, ``inputs``), bounded task submission and
fixed-tree sums (``scheduling``), the distributed kernel operator (``distributed_operator``) with its task bodies
(``tasks``) and engine (``cluster_engine``), the local cluster and GPU devices (``cluster``, ``devices``)."""
