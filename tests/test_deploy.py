"""The deployment recipes under deploy/: manifests, job scripts, pinned requirements, Dockerfiles, README commands.

The default tests are fast and offline: nothing is built, applied or submitted. Two slow tests run the SLURM recipes
end to end on this machine, with stand-ins for `srun`, `sbatch` and `scancel`.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "kubernetes"
SLURM = DEPLOY / "slurm"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

SUBCOMMANDS = {"ingest", "fit", "predict", "evaluate", "inspect"}
CLUSTER_SUBCOMMANDS = {"ingest", "fit", "predict"}  # the ones the recipes run with --scheduler
# dask-cuda pins one exact dask/distributed release; only these may differ between the CPU and GPU locks
RAPIDS_GOVERNED = {"dask", "distributed"}
IMAGE = re.compile(rf"^rfm-dask:{re.escape(VERSION)}-(cpu|gpu)$")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


# -- helpers --------------------------------------------------------------------------------------------------------
def yaml_documents() -> dict[Path, list]:
    return {p: list(yaml.safe_load_all(p.read_text())) for p in sorted(DEPLOY.rglob("*.y*ml"))}


def k8s_objects() -> list[dict]:
    return [doc for docs in yaml_documents().values() for doc in docs if doc is not None]


def of_kind(kind: str) -> list[dict]:
    return [o for o in k8s_objects() if o["kind"] == kind]


def daskclusters() -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in of_kind("DaskCluster")}


def pod_specs(obj: dict) -> list[dict]:
    """Every pod spec in a DaskCluster, DaskWorkerGroup or Job."""
    spec = obj["spec"]
    if obj["kind"] == "DaskCluster":
        return [spec["scheduler"]["spec"], spec["worker"]["spec"]]
    if obj["kind"] == "DaskWorkerGroup":
        return [spec["worker"]["spec"]]
    if obj["kind"] == "Job":
        return [spec["template"]["spec"]]
    return []


def images(obj: dict) -> set[str]:
    return {c["image"] for pod in pod_specs(obj) for c in pod["containers"]}


def shell_commands(text: str) -> list[list[str]]:
    """Simple commands of a shell script: continuation lines joined, comments dropped, split at ; && || | &."""
    text = re.sub(r"\\\n", " ", text)
    commands: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in SHELL_OPERATORS or set(token) <= set(";&|"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def rfm_dask_invocations(text: str) -> list[list[str]]:
    """The argument lists after every `rfm-dask` word in a script (also inside `docker run IMAGE rfm-dask ...`),
    plus the command lines given to deploy/slurm/cluster.py as --step."""
    found = []
    for words in shell_commands(text):
        for i, word in enumerate(words):
            if word == "rfm-dask":
                found.append(words[i + 1:])
                break
        for i, word in enumerate(words[:-1]):
            if word == "--step":
                found.append(shlex.split(words[i + 1]))
    return found


def option(argv: list[str], name: str) -> str | None:
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def check_invocations(invocations: list[list[str]], where: str) -> None:
    assert invocations, f"{where}: no rfm-dask command found"
    for argv in invocations:
        assert argv and argv[0] in SUBCOMMANDS, f"{where}: `rfm-dask {shlex.join(argv)}` is not a known subcommand"
        if argv[0] not in CLUSTER_SUBCOMMANDS:
            assert "--scheduler" not in argv, f"{where}: `rfm-dask {argv[0]}` takes no --scheduler in these recipes"


def cli_parser():
    """The package's own rfm-dask parser, when it has one."""
    try:
        from rfm_dask.app import cli
    except ImportError:
        return None
    build = getattr(cli, "build_parser", None)
    return build()[0] if build else None


def pins(path: Path) -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==" and "*" not in spec.version, f"{path.name}: {line} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name not in found, f"{path.name}: {name} pinned twice"
        found[name] = Version(spec.version)
    return found


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments and parser directives dropped, continuation lines joined."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current:
            logical.append(current)
        current = ""
    assert not current, f"{path.name}: ends inside a continued line"
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def resolve_args(instructions: list[tuple[str, str]], value: str) -> str:
    defaults = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            key, default = rest.split("=", 1)
            defaults[key] = default.strip('"')
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)), value)


def load_slurm_cluster_module():
    spec = importlib.util.spec_from_file_location("rfm_deploy_slurm_cluster", SLURM / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- YAML and Kubernetes --------------------------------------------------------------------------------------------
def test_every_yaml_under_deploy_parses_into_kubernetes_objects():
    documents = yaml_documents()
    assert {p.name for p in documents} >= {"daskcluster.yaml", "daskcluster-gpu.yaml", "fit-job.yaml", "storage.yaml"}
    for path, docs in documents.items():
        docs = [d for d in docs if d is not None]
        assert docs, f"{path} holds no document"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            assert {"apiVersion", "kind", "metadata", "spec"} <= doc.keys(), f"{path}: {sorted(doc)}"
            assert doc["metadata"].get("name"), f"{path}: {doc['kind']} without a name"
    names = [(o["kind"], o["metadata"]["name"]) for o in k8s_objects()]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


def test_daskclusters_follow_the_operator_schema():
    clusters = daskclusters()
    assert {"rfm-dask", "rfm-dask-gpu"} <= clusters.keys()
    for name, cluster in clusters.items():
        assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
        scheduler, worker = cluster["spec"]["scheduler"], cluster["spec"]["worker"]
        (container,) = scheduler["spec"]["containers"]
        assert container["args"][:2] == ["dask", "scheduler"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        service = scheduler["service"]
        assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
        by_port = {p["port"]: p for p in service["ports"]}
        assert by_port[8786]["name"] == by_port[8786]["targetPort"] == "tcp-comm"
        assert by_port[8787]["name"] == "http-dashboard"  # the operator retires workers through this port name
        assert isinstance(worker["replicas"], int) and worker["replicas"] >= 0
        for c in worker["spec"]["containers"]:
            assert c["args"][:2] == ["dask", "worker"]
            assert option(c["args"], "--name") == "$(DASK_WORKER_NAME)"


def test_images_agree_within_each_cluster_and_name_the_project_version():
    clusters = daskclusters()
    for obj in k8s_objects():
        for image in images(obj):
            assert IMAGE.match(image), f"{obj['kind']} {obj['metadata']['name']}: image {image}"
    assert {IMAGE.match(i).group(1) for i in images(clusters["rfm-dask"])} == {"cpu"}
    assert {IMAGE.match(i).group(1) for i in images(clusters["rfm-dask-gpu"])} == {"gpu"}
    for group in of_kind("DaskWorkerGroup"):
        assert images(group) == images(clusters[group["spec"]["cluster"]]), "one Dask release per cluster"


def test_gpu_worker_group_runs_dask_cuda_workers_with_one_gpu_each():
    groups = of_kind("DaskWorkerGroup")
    assert groups
    for group in groups:
        assert group["apiVersion"] == "kubernetes.dask.org/v1"
        assert group["spec"]["cluster"] in daskclusters()
        for c in group["spec"]["worker"]["spec"]["containers"]:
            assert c["args"][:3] == ["dask", "cuda", "worker"]
            assert option(c["args"], "--name") == "$(DASK_WORKER_NAME)"
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
            assert c["image"].endswith("-gpu")
    cpu = daskclusters()["rfm-dask"]
    assert not any("nvidia.com/gpu" in str(pod) for pod in pod_specs(cpu))


def test_jobs_run_ingest_fit_predict_against_a_scheduler_service_with_the_clusters_image():
    clusters = daskclusters()
    jobs = of_kind("Job")
    assert {j["metadata"]["name"] for j in jobs} >= {"rfm-dask-fit", "rfm-dask-fit-gpu"}
    for job in jobs:
        assert job["apiVersion"] == "batch/v1"
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] in ("Never", "OnFailure")
        (container,) = pod["containers"]
        script = "\n".join(container.get("args", []))
        assert container["command"][0] in ("bash", "sh", "/bin/bash", "/bin/sh")
        calls = rfm_dask_invocations(script)
        check_invocations(calls, job["metadata"]["name"])
        by_command = {argv[0]: argv for argv in calls}
        assert [a[0] for a in calls if a[0] in CLUSTER_SUBCOMMANDS] == ["ingest", "fit", "predict"]
        schedulers = {option(by_command[c], "--scheduler") for c in CLUSTER_SUBCOMMANDS}
        assert len(schedulers) == 1 and None not in schedulers
        (address,) = schedulers
        match = re.fullmatch(r"tcp://([a-z0-9-]+)-scheduler:8786", address)
        assert match and match.group(1) in clusters, f"{address} is not a DaskCluster's scheduler Service"
        assert images(job) == images(clusters[match.group(1)])
        # the store ingest writes is the one fit reads; the model fit writes is the one predict reads
        assert by_command["ingest"][2] == by_command["fit"][1]
        assert by_command["fit"][2] == by_command["predict"][1]


def test_shared_volume_claim_exists_and_is_mounted_at_one_path_by_workers_and_jobs():
    claims = {o["metadata"]["name"]: o for o in of_kind("PersistentVolumeClaim")}
    assert claims and all("ReadWriteMany" in c["spec"]["accessModes"] for c in claims.values())
    mounts = set()
    for obj in of_kind("Job") + of_kind("DaskWorkerGroup") + of_kind("DaskCluster"):
        for pod in pod_specs(obj):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                for m in c.get("volumeMounts", []):
                    claim = volumes[m["name"]].get("persistentVolumeClaim")
                    if claim:
                        assert claim["claimName"] in claims
                        mounts.add((claim["claimName"], m["mountPath"]))
    assert len(mounts) == 1, f"the shared volume is mounted at different paths: {mounts}"


# -- SLURM ----------------------------------------------------------------------------------------------------------
def test_slurm_job_script_renders():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (it is in the test extra)")
    run = [sys.executable, str(SLURM / "cluster.py"), "--print-job-script"]
    cpu = subprocess.run(run + ["--account", "proj", "--queue", "short", "--cores", "8", "--memory", "16GiB",
                                "--walltime", "01:30:00", "--local-directory", "$TMPDIR",
                                "--prologue", "source /env/bin/activate"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert cpu.startswith("#!")
    for line in ("#SBATCH -A proj", "#SBATCH -p short", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=16G",
                 "#SBATCH -t 01:30:00", "source /env/bin/activate"):
        assert line in cpu.splitlines(), line
    command = cpu.strip().splitlines()[-1].split()
    assert command[1:3] == ["-m", "distributed.cli.dask_worker"]
    assert option(command, "--nthreads") == "8" and option(command, "--local-directory") == "$TMPDIR"

    gpu = subprocess.run(run + ["--gpu", "--gpus-per-job", "2", "--cores", "16", "--memory", "64GiB"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "#SBATCH --gres=gpu:2" in gpu.splitlines() and "#SBATCH --cpus-per-task=16" in gpu.splitlines()
    command = gpu.strip().splitlines()[-1].split()
    assert command[1:3] == ["-m", "dask_cuda.cli"]  # `dask cuda worker`, one process per GPU
    assert option(command, "--nthreads") == "1" and option(command, "--memory-limit") == "32.00GiB"  # 64GiB over 2 GPUs
    assert "--nworkers" not in command


def test_slurm_launcher_adds_the_scheduler_to_cluster_steps_only():
    mod = load_slurm_cluster_module()
    assert set(mod.SUBCOMMANDS) == SUBCOMMANDS and set(mod.CLUSTER_SUBCOMMANDS) == CLUSTER_SUBCOMMANDS
    exe = ["/env/bin/rfm-dask"]
    assert mod.step_command("fit s.zarr m.rfm --iters 3", "tcp://h:1", exe) == [
        "/env/bin/rfm-dask", "fit", "s.zarr", "m.rfm", "--iters", "3", "--scheduler", "tcp://h:1"]
    assert mod.step_command("rfm-dask ingest 'a b.parquet' s.zarr --target y", "tcp://h:1", exe)[1:4] == [
        "ingest", "a b.parquet", "s.zarr"]
    assert mod.step_command("inspect m.rfm", "tcp://h:1", exe) == ["/env/bin/rfm-dask", "inspect", "m.rfm"]
    for bad, why in (("train s.zarr", "must start with one of"), ("", "must start with one of"),
                     ("fit s m --scheduler tcp://x:1", "leave out --scheduler")):
        with pytest.raises(SystemExit, match=why) as exit_info:
            mod.step_command(bad, "tcp://h:1", exe)
        assert exit_info.value.code not in (0, None)  # a message: exit status 1
    args = mod.build_parser().parse_args(["--jobs", "3", "--gpu", "--gpus-per-job", "4"])
    assert mod.n_workers(args) == 12
    assert mod.n_workers(mod.build_parser().parse_args(["--jobs", "3", "--processes", "2"])) == 6


def test_slurm_options_fall_back_on_environment(monkeypatch):
    monkeypatch.setenv("RFM_SLURM_ACCOUNT", "envproj")
    monkeypatch.setenv("RFM_SLURM_JOBS", "7")
    monkeypatch.setenv("RFM_SLURM_GPU", "1")
    args = load_slurm_cluster_module().build_parser().parse_args([])
    assert (args.account, args.jobs, args.gpu) == ("envproj", 7, True)


def test_sbatch_script_is_valid_bash_with_directives_first():
    path = SLURM / "fit.sbatch"
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(path)], check=True, timeout=30)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#!")
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line.strip() and not line.startswith("#"))
    directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert directives and max(directives) < first_command, "sbatch stops reading #SBATCH at the first command"
    calls = rfm_dask_invocations(path.read_text())
    check_invocations(calls, path.name)
    assert [a[0] for a in calls if a[0] in CLUSTER_SUBCOMMANDS] == ["ingest", "fit", "predict"]
    assert all(option(a, "--scheduler") == "$SCHEDULER" for a in calls if a[0] in CLUSTER_SUBCOMMANDS)
    text = path.read_text()
    assert "dask scheduler --scheduler-file" in text and "dask worker --scheduler-file" in text
    assert "dask cuda worker --scheduler-file" in text


# -- requirements and Dockerfiles ------------------------------------------------------------------------------------
def test_pinned_requirements_satisfy_pyproject():
    cpu, gpu = pins(DOCKER / "requirements-cpu.txt"), pins(DOCKER / "requirements-gpu.txt")
    base = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    gpu_extra = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    for lock, name, required in ((cpu, "requirements-cpu.txt", base), (gpu, "requirements-gpu.txt", base + gpu_extra)):
        for req in required:
            key = canonicalize_name(req.name)
            assert key in lock, f"{name}: {req.name} is not pinned"
            assert req.specifier.contains(lock[key], prereleases=True), f"{name}: {req.name}=={lock[key]} vs {req}"
    assert "dask-cuda" in gpu and "cupy-cuda12x" in gpu
    assert not {"dask-cuda", "cupy-cuda12x", "torch"} & cpu.keys()
    differ = {n for n in cpu.keys() & gpu.keys() if cpu[n] != gpu[n]}
    assert differ <= RAPIDS_GOVERNED, f"the GPU lock departs from the CPU one beyond dask/distributed: {differ}"
    assert cpu.keys() <= gpu.keys(), "the GPU lock is complete on its own"


def test_packaging_is_importable():
    import packaging

    assert Version(packaging.__version__) >= Version("22")


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_dockerfile_installs_pinned_requirements_then_the_project(variant):
    path = DOCKER / f"Dockerfile.{variant}"
    instructions = dockerfile_instructions(path)
    words = [w for w, _ in instructions]
    assert set(words) <= {"FROM", "ARG", "ENV", "RUN", "COPY", "USER", "WORKDIR", "EXPOSE", "CMD", "LABEL"}
    first = next(i for i, w in enumerate(words) if w != "ARG")
    assert words[first] == "FROM" and words.count("FROM") == 1
    base = resolve_args(instructions, instructions[first][1])
    if variant == "cpu":
        assert base == "python:3.11-slim"
    else:
        assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", base), base
        assert any(w == "RUN" and "python3.11" in r for w, r in instructions)

    requirements = f"deploy/docker/requirements-{variant}.txt"
    copies = [r.split() for w, r in instructions if w == "COPY"]
    copy_req = next(i for i, (w, r) in enumerate(instructions) if w == "COPY" and requirements in r)
    target = instructions[copy_req][1].split()[-1]
    install_req = next(i for i, (w, r) in enumerate(instructions)
                       if w == "RUN" and re.search(rf"pip install (--requirement|-r) {re.escape(target)}", r))
    copy_src = next(i for i, (w, r) in enumerate(instructions) if w == "COPY" and r.split()[0] == "rfm_dask")
    install_project = next(i for i, (w, r) in enumerate(instructions)
                           if w == "RUN" and "pip install --no-deps" in r and "rfm-dask-src" in r)
    assert copy_req < install_req < copy_src < install_project
    run_project = instructions[install_project][1]
    assert "pip check" in run_project and "rfm-dask --help" in run_project and "'cupy' not in sys.modules" in run_project
    if variant == "gpu":
        assert "[gpu]" in run_project and "dask cuda worker --help" in run_project
    assert any(w == "COPY" and "pyproject.toml" in r for w, r in instructions)
    user = [r for w, r in instructions if w == "USER"]
    assert user and user[-1] not in ("root", "0")

    # everything COPY sends exists, and the Dockerfile's own ignore file lets it into the build context
    ignore = [line.strip() for line in (DOCKER / f"Dockerfile.{variant}.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    assert ignore[0] == "*"
    for parts in copies:
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"{path.name} copies {src}, which does not exist"
            assert any(src == a or fnmatch.fnmatch(src, a) for a in allowed), f"{src} is excluded by the dockerignore"


# -- README ---------------------------------------------------------------------------------------------------------
def readme_blocks() -> list[str]:
    return re.findall(r"```(?:bash|sh|console)\n(.*?)```", (DEPLOY / "README.md").read_text(), flags=re.S)


def test_readme_commands_use_only_existing_subcommands():
    blocks = readme_blocks()
    calls = [argv for block in blocks for argv in rfm_dask_invocations(block)]
    check_invocations(calls, "deploy/README.md")
    assert {"ingest", "fit", "predict"} <= {a[0] for a in calls}
    parser = cli_parser()
    if parser is not None:  # and they parse with the package's own command line
        for argv in calls:
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"deploy/README.md: `rfm-dask {shlex.join(argv)}` does not parse")


def test_readme_builds_the_images_the_manifests_use():
    built = set()
    for block in readme_blocks():
        for words in shell_commands(block):
            if words[:2] == ["docker", "build"]:
                tag, dockerfile = option(words, "-t"), option(words, "-f")
                assert (ROOT / dockerfile).is_file()
                built.add((dockerfile, tag))
    assert ("deploy/docker/Dockerfile.cpu", f"rfm-dask:{VERSION}-cpu") in built
    assert ("deploy/docker/Dockerfile.gpu", f"rfm-dask:{VERSION}-gpu") in built
    manifest_images = set().union(*(images(o) for o in k8s_objects()))
    assert manifest_images == {f"rfm-dask:{VERSION}-cpu", f"rfm-dask:{VERSION}-gpu"}


def test_importing_the_package_loads_no_gpu_library():
    code = ("import importlib.util, sys, rfm_dask\n"
            "if importlib.util.find_spec('rfm_dask.app.cli'): import rfm_dask.app.cli\n"
            "assert 'cupy' not in sys.modules, 'cupy imported at import time'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- end to end, slow -----------------------------------------------------------------------------------------------
def _write_parquet(tmp_path: Path) -> tuple[Path, Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    paths = []
    for name, n in (("train", 400), ("test", 50)):
        x = rng.normal(size=(n, 3))
        table = pa.table({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "y": x[:, 0] * x[:, 1] + 0.1 * x[:, 2]})
        pq.write_table(table, tmp_path / f"{name}.parquet")
        paths.append(tmp_path / f"{name}.parquet")
    return paths[0], paths[1]


def _stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def _needs_cli():
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    if importlib.util.find_spec("rfm_dask.app.cli") is None:
        pytest.skip("rfm_dask has no command line yet")


@pytest.mark.slow
def test_fit_sbatch_end_to_end_with_a_stand_in_srun(tmp_path):
    _needs_cli()
    train, test = _write_parquet(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stand_in(bin_dir, "srun", 'while [[ $# -gt 0 && $1 == -* ]]; do shift; done\nexec "$@"\n')  # one node
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "1", "SLURM_CPUS_PER_TASK": "2", "TMPDIR": str(tmp_path),
           "RFM_FIT_ARGS": "--iters 1 --solver direct"}
    work = tmp_path / "work"
    result = subprocess.run(["bash", str(SLURM / "fit.sbatch"), str(train), "y", str(work), str(test)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    import pyarrow.parquet as pq

    assert pq.read_table(work / "predictions.parquet").num_rows == 50
    assert (work / "model.rfm").is_file() and not list(work.glob("scheduler-*.json"))


@pytest.mark.slow
def test_slurm_cluster_launcher_end_to_end_with_stand_in_sbatch(tmp_path):
    _needs_cli()
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (it is in the test extra)")
    train, test = _write_parquet(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    # sbatch: run the job script in its own session, in the background; scancel: end that session
    _stand_in(bin_dir, "sbatch", f'script=$(mktemp "{jobs}/job-XXXXXX")\ncp "$1" "$script"\n'
                                 'setsid bash "$script" > "$script.log" 2>&1 < /dev/null &\n'
                                 'echo "$!" >> "' + str(jobs) + '/pids"\necho "Submitted batch job $!"\n')
    _stand_in(bin_dir, "scancel", 'kill -TERM -- "-$1" 2>/dev/null || true\n')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, str(SLURM / "cluster.py"), "--jobs", "1", "--cores", "2", "--memory", "2GiB",
           "--dashboard-address", ":0", "--wait-timeout", "300",
           "--step", f"ingest {train} {work / 'store.zarr'} --target y",
           "--step", f"fit {work / 'store.zarr'} {work / 'model.rfm'} --iters 1 --solver direct",
           "--step", f"predict {work / 'model.rfm'} {test} {work / 'predictions.parquet'}"]
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    finally:  # end any job session this test started that is still running
        for pid in (jobs / "pids").read_text().split() if (jobs / "pids").exists() else []:
            try:
                os.killpg(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "scheduler: tcp://" in result.stdout
    import pyarrow.parquet as pq

    assert pq.read_table(work / "predictions.parquet").num_rows == 50
