#!/usr/bin/env python
"""Run rfm-dask on a SLURM cluster: start a Dask cluster of SLURM jobs (dask-jobqueue), then the rfm-dask steps.

The Dask scheduler runs inside this process (on a login node, or inside a small batch job); each SLURM job runs one
`dask worker` (CPU) or one `dask cuda worker` (--gpu, one worker process per GPU of the job). The script waits for
the workers, prints the scheduler address and runs each --step as `rfm-dask STEP --scheduler ADDRESS` in a
subprocess (ingest, fit and predict; evaluate and inspect run as given). Without --step it keeps the cluster up until
interrupted, for other clients to use the printed address.

    python deploy/slurm/cluster.py --jobs 4 --cores 16 --memory 64GB --walltime 04:00:00 --account proj \\
        --step "ingest /shared/train.parquet /shared/rfm/store.zarr --target y" \\
        --step "fit /shared/rfm/store.zarr /shared/rfm/model.rfm" \\
        --step "predict /shared/rfm/model.rfm /shared/test.parquet /shared/rfm/predictions.parquet"

    python deploy/slurm/cluster.py --gpu --gpus-per-job 4 --cores 32 --memory 256GB --print-job-script

Options fall back on RFM_SLURM_* environment variables (shown in --help), then on dask-jobqueue's configuration
(jobqueue.slurm.* in ~/.config/dask/jobqueue.yaml). Paths in the steps must be on storage every worker can read.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

SUBCOMMANDS = ("ingest", "fit", "predict", "evaluate", "inspect")
CLUSTER_SUBCOMMANDS = ("ingest", "fit", "predict")  # the ones given --scheduler
PLACEHOLDER_SCHEDULER = "tcp://SCHEDULER-ADDRESS:8786"


def _env(name: str, default: Any = None, kind: type = str) -> Any:
    value = os.environ.get(f"RFM_SLURM_{name}")
    return default if value in (None, "") else kind(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Environment fallbacks: RFM_SLURM_<OPTION> (upper case, _).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("SLURM jobs (one Dask worker job each)")
    g.add_argument("--jobs", type=int, default=_env("JOBS", 2, int), help="number of SLURM jobs")
    g.add_argument("--cores", type=int, default=_env("CORES", 8, int), help="CPU cores per job")
    g.add_argument("--memory", default=_env("MEMORY", "32GB"), help="memory per job")
    g.add_argument("--processes", type=int, default=_env("PROCESSES", 1, int),
                   help="CPU: worker processes per job (cores are split between them)")
    g.add_argument("--walltime", default=_env("WALLTIME", "02:00:00"), help="job time limit")
    g.add_argument("--account", default=_env("ACCOUNT"), help="SLURM account (#SBATCH -A)")
    g.add_argument("--queue", "--partition", dest="queue", default=_env("QUEUE"), help="partition (#SBATCH -p)")
    g.add_argument("--interface", default=_env("INTERFACE"),
                   help="network interface for scheduler and workers, e.g. ib0")
    g.add_argument("--local-directory", default=_env("LOCAL_DIRECTORY"),
                   help="worker scratch/spill directory on the node, e.g. '$TMPDIR' (expanded in the job)")
    g.add_argument("--log-directory", default=_env("LOG_DIRECTORY"), help="directory for the jobs' SLURM logs")
    g.add_argument("--python", default=_env("PYTHON", sys.executable),
                   help="Python on the compute nodes with rfm_dask installed")
    g.add_argument("--prologue", action="append", default=None, metavar="LINE",
                   help="shell line run in each job before the worker (repeatable), e.g. 'module load cuda/12.4'")
    g.add_argument("--job-extra", action="append", default=None, metavar="DIRECTIVE",
                   help="extra #SBATCH directive (repeatable), e.g. '--constraint=skylake'")
    g = p.add_argument_group("GPU workers")
    g.add_argument("--gpu", action="store_true", default=_env("GPU", False, lambda v: v.lower() not in ("0", "false", "no")),
                   help="run `dask cuda worker` (dask-cuda): one worker process per GPU of each job")
    g.add_argument("--gpus-per-job", type=int, default=_env("GPUS_PER_JOB", 1, int),
                   help="GPUs requested per job (#SBATCH --gres=gpu:N)")
    g.add_argument("--threads-per-gpu", type=int, default=_env("THREADS_PER_GPU", 1, int),
                   help="Dask threads per GPU worker")
    g = p.add_argument_group("what to run")
    g.add_argument("--step", action="append", default=[], metavar="'SUBCOMMAND ARGS'",
                   help=f"an rfm-dask command line, e.g. 'fit store.zarr model.rfm' (repeatable; one of "
                        f"{', '.join(SUBCOMMANDS)})")
    g.add_argument("--rfm-dask", default=None, metavar="PATH",
                   help="the rfm-dask executable (default: next to --python's interpreter, else on PATH)")
    g.add_argument("--wait-workers", type=int, default=None,
                   help="workers to wait for before the first step (default: all of them)")
    g.add_argument("--wait-timeout", type=float, default=_env("WAIT_TIMEOUT", 3600.0, float),
                   help="seconds to wait for them (jobs may queue)")
    g.add_argument("--dashboard-address", default=_env("DASHBOARD_ADDRESS", ":8787"), help="scheduler dashboard")
    g.add_argument("--print-job-script", action="store_true", help="print the worker job script and exit")
    return p


def n_workers(args: argparse.Namespace) -> int:
    """Dask workers the cluster will have once all jobs run."""
    return args.jobs * (args.gpus_per_job if args.gpu else args.processes)


def job_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments shared by SLURMCluster and its job class.

    GPU jobs run `python -m dask_cuda.cli` (= `dask cuda worker`), which starts one worker process per visible GPU
    and names them NAME-0, NAME-1, ...; `processes` is set to the GPU count so that dask-jobqueue expects exactly
    those names and splits --nthreads and --memory-limit per GPU worker. SLURM gets all --cores (job_cpu).
    """
    kw: dict[str, Any] = dict(
        memory=args.memory, walltime=args.walltime, account=args.account, queue=args.queue,
        interface=args.interface, local_directory=args.local_directory, log_directory=args.log_directory,
        python=args.python, job_name="rfm-dask-worker", job_script_prologue=list(args.prologue or []),
        job_extra_directives=list(args.job_extra or []),
    )
    if args.gpu:
        if args.gpus_per_job < 1:
            raise SystemExit("--gpus-per-job must be at least 1")
        kw.update(
            cores=args.gpus_per_job * args.threads_per_gpu, processes=args.gpus_per_job, job_cpu=args.cores,
            worker_command="dask_cuda.cli",
        )
        kw["job_extra_directives"].append(f"--gres=gpu:{args.gpus_per_job}")
    else:
        kw.update(cores=args.cores, processes=args.processes)
    return {k: v for k, v in kw.items() if v is not None}


def job_script(args: argparse.Namespace) -> str:
    """The batch script each worker job runs (with a placeholder scheduler address); starts no scheduler."""
    from dask_jobqueue import SLURMCluster

    kw = job_kwargs(args)
    return SLURMCluster.job_cls(scheduler=PLACEHOLDER_SCHEDULER, name="rfm-dask-worker", **kw).job_script()


def rfm_dask_executable(args: argparse.Namespace) -> list[str]:
    if args.rfm_dask:
        return [args.rfm_dask]
    beside = Path(args.python).parent / "rfm-dask"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("rfm-dask")
    if found:
        return [found]
    return [args.python, "-m", "rfm_dask.app.cli"]


def step_command(step: str, scheduler: str, executable: list[str]) -> list[str]:
    """`rfm-dask STEP`, with `--scheduler ADDRESS` added for the commands that run on the cluster."""
    words = shlex.split(step)
    if words and Path(words[0]).name == "rfm-dask":
        words = words[1:]
    if not words or words[0] not in SUBCOMMANDS:
        raise SystemExit(f"--step {step!r}: must start with one of {', '.join(SUBCOMMANDS)}")
    if "--scheduler" in words or any(w.startswith("--scheduler=") for w in words):
        raise SystemExit(f"--step {step!r}: leave out --scheduler, this script adds it")
    if words[0] in CLUSTER_SUBCOMMANDS:
        words += ["--scheduler", scheduler]
    return [*executable, *words]


def run(args: argparse.Namespace) -> int:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    executable = rfm_dask_executable(args)
    for step in args.step:  # reject bad steps before any job is submitted
        step_command(step, PLACEHOLDER_SCHEDULER, executable)
    wanted = n_workers(args) if args.wait_workers is None else args.wait_workers
    with SLURMCluster(scheduler_options={"dashboard_address": args.dashboard_address}, **job_kwargs(args)) as cluster:
        address = cluster.scheduler_address
        print(f"scheduler: {address}\ndashboard: {cluster.dashboard_link}", flush=True)
        cluster.scale(jobs=args.jobs)
        print(f"submitted {args.jobs} SLURM job(s); waiting for {wanted} worker(s)", flush=True)
        with Client(cluster) as client:
            client.wait_for_workers(wanted, timeout=args.wait_timeout)
            print(f"workers: {len(client.scheduler_info()['workers'])}", flush=True)
            if not args.step:
                print("no --step given: the cluster stays up until interrupted (Ctrl-C)", flush=True)
                try:
                    signal.pause()
                except KeyboardInterrupt:
                    pass
                return 0
            for step in args.step:
                cmd = step_command(step, address, executable)
                print("+ " + shlex.join(cmd), flush=True)
                status = subprocess.run(cmd).returncode
                if status != 0:
                    print(f"step failed with exit status {status}: {step}", file=sys.stderr)
                    return status
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_job_script:
        print(job_script(args), end="")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
