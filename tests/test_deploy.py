"""The deployment files (docker/, .dockerignore), checked offline with no Docker engine and no cluster.

- hadolint passes on both Dockerfiles (docker/hadolint.yaml: every rule, down to style);
- every built-in Kubernetes manifest validates against the Kubernetes schemas (kubernetes-validate,
  strict, oldest and newest supported versions); the kinds it has no schema for (the
  Kustomization, the Prometheus Operator's ServiceMonitor CRD) are checked field by field here;
- checkov finds no failed check in the Dockerfiles and manifests, and every check skipped there says why;
- the image serves exactly the repository's model configs, and the ports, probes, shared memory,
  shutdown timing and user agree across the Dockerfile, compose.yaml and the manifests.

The tools live in .venv-deploy (deploy-requirements.txt), which `make` creates; without it these
tests fail rather than skip. What only Docker and a GPU can show is docker/prove.sh's job.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from iqa import contract
from iqa.serving.launcher import (
    DEFAULT_REPOSITORY,
    GRPC_MAX_CONNECTION_AGE_GRACE_MS,
    GRPC_MAX_CONNECTION_AGE_MS,
    MODELS,
    Ports,
)
from iqa.serving.watchdog import START_TIMEOUT_S, AdminAccess, shm_region_prefix

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
DOCKERFILE = DOCKER / "Dockerfile"
LOCUST_DOCKERFILE = DOCKER / "Dockerfile.locust"
COMPOSE = DOCKER / "compose.yaml"
ADAPTER_VALUES = K8S / "prometheus-adapter-values.yaml"
DEPLOY_BIN = REPO / ".venv-deploy" / "bin"

# Kinds kubernetes-validate has no schema for, checked by hand below.
HAND_CHECKED_KINDS = {("kustomize.config.k8s.io/v1beta1", "Kustomization"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
# Oldest and newest Kubernetes the manifests are validated against (docker/README.md says >= 1.29).
K8S_VERSIONS = ("1.29.0", "1.37.0")
# NGC tritonserver release -> (its libtorch, the newest TorchScript file-format version that libtorch
# reads). What decides whether a libtorch loads a TorchScript file is the archive's `version` record,
# checked against caffe2/serialize/versions.h kMaxSupportedFileFormatVersion (0xA in every release from
# 2.0.1 to 2.14.1), not the release line that wrote it; the writer raises the record above 3 only for
# operators with upgraders (torch/csrc/jit/operator_upgraders). Moving the image means adding its row.
NGC_LIBTORCH = {"26.09": ("2.14.0a0", 0xA)}
PORTS = {"grpc": 8001, "metrics": 8002}  # what clients and Prometheus reach
HTTP_PORT = 8000  # Triton's HTTP: on the pod's loopback, for the watchdog only
HEALTH_PORT = 8003  # the watchdog's /ready and /live: probes only, no Service port
GRPC_APP_PROTOCOL = "kubernetes.io/h2c"
EXIT_TIMEOUT_S = 30
DNS_PORT = 53
# The tools' command lines, as docker/README.md gives them (relative to the checkout; checked below): the
# tests add only an output format they can read (-f json, -o json).
HADOLINT = ["hadolint", "--config", "docker/hadolint.yaml"]
KUBERNETES_VALIDATE = ["kubernetes-validate", "--strict", *(arg for v in K8S_VERSIONS for arg in ("-k", v))]
CHECKOV = ["checkov", "-d", "docker", "--framework", "dockerfile", "kubernetes", "--skip-download", "--compact"]
CHECKOV_ENV = {"BC_SKIP_MAPPING": "TRUE"}  # no call to the vendor's API for its check mapping
SHELLCHECK = ["shellcheck", "--severity=style"]


def tool(name: str) -> Path:
    path = DEPLOY_BIN / name
    if not path.is_file():
        pytest.fail(f"{path.relative_to(REPO)} is missing: run `make` (or `make test`), which creates .venv-deploy "
                    f"from deploy-requirements.txt", pytrace=False)
    return path


def command(line: list[str], *args) -> list:
    """One of the command lines above, its tool taken from .venv-deploy, with more arguments."""
    return [tool(line[0]), *line[1:], *args]


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=REPO, timeout=300, **kwargs)


# --- parsing ----------------------------------------------------------------------------------------


@dataclass
class Instruction:
    stage: int
    keyword: str
    args: str


def dockerfile(path: Path) -> list[Instruction]:
    """Logical instructions (continuations joined, comments dropped), numbered by build stage."""
    instructions, buffer, stage = [], "", -1
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        text = (buffer + stripped).strip()
        buffer = ""
        keyword, _, args = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword.upper(), args.strip()))
    return instructions


def only(instructions: list[Instruction], keyword: str, stage: int | None = None) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword and (stage is None or i.stage == stage)]


def final_stage(instructions: list[Instruction]) -> int:
    return max(i.stage for i in instructions)


def image_command(instructions: list[Instruction]) -> list[str]:
    (cmd,) = only(instructions, "CMD")
    return json.loads(cmd.args)


def server_command(instructions: list[Instruction]) -> list[str]:
    """The tritonserver command line the watchdog (the image's CMD) starts: what follows "--"."""
    command = image_command(instructions)
    return command[command.index("--") + 1:]


def flags(command: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for arg in command[1:]:
        name, _, value = arg.partition("=")
        out.setdefault(name, []).append(value)
    return out


@pytest.fixture(scope="module")
def yaml_docs() -> dict[str, list]:
    """Every YAML file under docker/, parsed by PyYAML from .venv-deploy (the main venv has no YAML parser)."""
    files = sorted(DOCKER.rglob("*.yaml"))
    code = "import json, sys, yaml; json.dump([[d for d in yaml.safe_load_all(open(f)) if d] for f in sys.argv[1:]], sys.stdout)"
    result = run([tool("python"), "-c", code, *files])
    assert result.returncode == 0, result.stderr
    return {str(f.relative_to(DOCKER)): docs for f, docs in zip(files, json.loads(result.stdout))}


@pytest.fixture(scope="module")
def kustomization(yaml_docs) -> dict:
    (doc,) = yaml_docs["k8s/kustomization.yaml"]
    return doc


@pytest.fixture(scope="module")
def manifests(yaml_docs, kustomization) -> dict[tuple[str, str], dict]:
    """(kind, name) -> resource, for every resource the kustomization applies."""
    out = {}
    for name in kustomization["resources"]:
        for doc in yaml_docs[f"k8s/{name}"]:
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.fixture(scope="module")
def compose(yaml_docs) -> dict:
    (doc,) = yaml_docs["compose.yaml"]
    return doc


def deployment(manifests) -> dict:
    (d,) = [v for (kind, _), v in manifests.items() if kind == "Deployment"]
    return d


def server_container(manifests) -> dict:
    (c,) = deployment(manifests)["spec"]["template"]["spec"]["containers"]
    return c


def quantity_bytes(value: str) -> int:
    """Kubernetes quantities (1Gi, 512Mi) and Docker sizes (1gb, 512m): both binary multiples."""
    match = re.fullmatch(r"(\d+)\s*([kKmMgG]?)(i?)([bB]?)", str(value))
    assert match, f"cannot read size {value!r}"
    number, unit = int(match[1]), match[2].lower()
    return number * 1024 ** " kmg".index(unit or " ")


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, f"cannot read duration {duration!r}"
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


# --- the tools --------------------------------------------------------------------------------------


def test_hadolint_passes_every_rule_on_both_dockerfiles():
    result = run(command(HADOLINT, "-f", "json", DOCKERFILE, LOCUST_DOCKERFILE))
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout + result.stderr


def test_hadolint_ignores_are_justified_and_the_linter_really_lints(tmp_path):
    config = (DOCKER / "hadolint.yaml").read_text()
    assert not re.search(r"^\s*(ignored|override)\s*:", config, re.M), "docker/hadolint.yaml must not ignore rules"
    for path in (DOCKERFILE, LOCUST_DOCKERFILE):
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if "hadolint ignore=" in line:
                above = lines[n - 1].strip() if n else ""
                assert above.startswith("#") and "hadolint" not in above and len(above) > 20, \
                    f"{path.name}:{n + 1}: an ignored rule needs a comment line above it saying why"
    # A linter that says nothing about anything proves nothing: it must flag a bad Dockerfile.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/some/image\nRUN pip install requests\n")
    result = run(command(HADOLINT, "-f", "json", bad))
    assert result.returncode != 0
    assert {"DL3006", "DL3013", "DL3026", "DL3042"} <= {r["code"] for r in json.loads(result.stdout)}


def test_built_in_manifests_validate_against_the_kubernetes_schemas(kustomization, manifests):
    files = [K8S / name for name in kustomization["resources"]]
    result = run(command(KUBERNETES_VALIDATE, *files))
    assert result.returncode == 0, result.stdout + result.stderr
    built_in = {(kind, name) for (kind, name), doc in manifests.items()
                if (doc["apiVersion"], kind) not in HAND_CHECKED_KINDS}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= {k for k, _ in built_in}
    passed = set(re.findall(r"^INFO \S+ passed for resource (\S+) against version (\S+)$", result.stdout, re.M))
    for kind, name in built_in:
        for version in K8S_VERSIONS:
            assert (f"{kind.lower()}/{name}", version.rsplit(".", 1)[0]) in passed, f"{kind}/{name} not validated for {version}"
    # Anything without a schema is a kind this file checks by hand, nothing else.
    for kind, api_version in re.findall(r"^WARN .* schema for kind (\S+) with api version (\S+) ", result.stdout, re.M):
        assert (api_version, kind) in HAND_CHECKED_KINDS, f"no schema and no hand check for {kind} {api_version}"


def test_the_schema_check_rejects_an_unknown_field(tmp_path, manifests):
    broken = json.loads(json.dumps(deployment(manifests)))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True  # a typo
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(broken))  # JSON is YAML
    result = run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSIONS[-1], path])
    assert result.returncode != 0 and "readOnlyRootFS" in result.stdout


def test_kustomization_applies_every_manifest_and_the_image(kustomization, yaml_docs):
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "resources", "images", "labels"}
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", ADAPTER_VALUES.name}
    assert listed == on_disk, "every manifest in docker/k8s is applied, and nothing else"
    namespaces = {doc["metadata"].get("namespace") for name in listed for doc in yaml_docs[f"k8s/{name}"]
                  if doc["kind"] != "Namespace"}
    assert namespaces == {kustomization["namespace"]}
    (image,) = kustomization["images"]
    assert set(image) <= {"name", "newName", "newTag", "digest"}
    assert image["name"] == "iqa-degradation"


def test_service_monitor_structure(manifests):
    """The ServiceMonitor CRD has no schema in kubernetes-validate: its fields are checked here
    against the Prometheus Operator's monitoring.coreos.com/v1 API."""
    (monitor,) = [v for (kind, _), v in manifests.items() if kind == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"}
    assert set(spec["selector"]) == {"matchLabels"}
    selected = [s for (kind, _), s in manifests.items() if kind == "Service"
                and spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["iqa-triton"], "exactly one Service scraped (no duplicate series)"
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings",
                             "metricRelabelings"}
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    assert seconds(endpoint["scrapeTimeout"]) < seconds(endpoint["interval"]) <= 30


def test_checkov_finds_no_unjustified_failure():
    # --skip-download: no call to the vendor's API; the checks are the ones in the pinned wheel.
    result = run(command(CHECKOV, "-o", "json"), env={**os.environ, **CHECKOV_ENV})
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports}
    assert set(by_type) == {"dockerfile", "kubernetes"}, result.stdout[:2000] + result.stderr[-2000:]
    for check_type, report in by_type.items():
        failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
        assert not failed, f"checkov {check_type}: {failed}"
        assert report["summary"]["parsing_errors"] == 0
        for skipped in report["results"]["skipped_checks"]:
            reason = skipped["check_result"].get("suppress_comment") or ""
            assert len(reason) > 40, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"
    assert result.returncode == 0, result.stderr[-2000:]
    scanned = {c["file_path"].lstrip("/") for r in reports for k in ("passed_checks", "skipped_checks")
               for c in r["results"][k]}
    assert {"Dockerfile", "Dockerfile.locust"} <= {Path(f).name for f in scanned}
    assert {Path(f).name for f in scanned if "k8s" in f} >= {"deployment.yaml", "service.yaml"}


def test_prove_script_passes_shellcheck():
    result = run(command(SHELLCHECK, DOCKER / "prove.sh"))
    assert result.returncode == 0, result.stdout
    assert os.access(DOCKER / "prove.sh", os.X_OK)


def test_the_gpu_training_scripts_pass_shellcheck():
    """training/gpu_run.sh runs where a mistake costs scarce GPU time, gpu_prepare.sh readies its two calls
    (tests/test_training.py runs both on the CPU)."""
    result = run(command(SHELLCHECK, REPO / "training" / "gpu_run.sh", REPO / "training" / "gpu_prepare.sh"))
    assert result.returncode == 0, result.stdout


def test_docker_readme_gives_the_offline_checks_as_these_tests_run_them(kustomization):
    """docker/README.md names each command with the flags used here, and `make deploy-check`, which runs this file."""
    text = " ".join((DOCKER / "README.md").read_text().replace("\\\n", " ").split())  # shell line continuations
    env = " ".join(f"{k}={v}" for k, v in CHECKOV_ENV.items())
    expected = [f"{' '.join(['.venv-deploy/bin/' + HADOLINT[0], *HADOLINT[1:]])} docker/Dockerfile docker/Dockerfile.locust",
                " ".join(['.venv-deploy/bin/' + KUBERNETES_VALIDATE[0], *KUBERNETES_VALIDATE[1:],
                          *(f"docker/k8s/{name}" for name in kustomization["resources"])]),
                f"{env} {' '.join(['.venv-deploy/bin/' + CHECKOV[0], *CHECKOV[1:]])}",
                f"{' '.join(['.venv-deploy/bin/' + SHELLCHECK[0], *SHELLCHECK[1:]])} docker/prove.sh training/gpu_run.sh training/gpu_prepare.sh",
                "make deploy-check"]
    for line in expected:
        assert line in text, f"docker/README.md does not give: {line}"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^deploy-check:.*\n\t\$\(PY\) -m pytest .*tests/test_deploy\.py", makefile, re.M)


# --- the image serves the repository --------------------------------------------------------------------


def test_the_image_serves_exactly_the_repository_model_configs():
    steps = dockerfile(DOCKERFILE)
    last = final_stage(steps)
    command = server_command(steps)
    options = flags(command)
    assert command[0] == "tritonserver"
    assert options["--model-repository"] == ["/models"]
    # Load everything in the repository at start; explicit mode lets the watchdog reload a model.
    assert options["--model-control-mode"] == ["explicit"] and options["--load-model"] == ["*"]
    assert "--disable-auto-complete-config" in options  # serve the committed configs as they are
    copies = [i.args.split() for i in only(steps, "COPY", last)]
    assert ["model_repository/", "/models/"] in copies
    # model.pt: traced in the export stage by the repository's own export, to the path copied from; the
    # degradation map's cells network likewise.
    (export,) = [i for i in only(steps, "RUN", 0) if "conversion.export" in i.args]
    assert "python -m conversion.export --output model_repository/iqa_resnet50/1/model.pt" in export.args
    assert "--cells-output model_repository/iqa_resnet50_cells/1/model.pt" in " ".join(export.args.split())
    (workdir,) = only(steps, "WORKDIR", 0)
    for network in (contract.NETWORK_MODEL, contract.CELLS_NETWORK_MODEL):
        src = f"{workdir.args}/model_repository/{network}/1/model.pt"
        assert [f"--from={only(steps, 'FROM', 0)[0].args.split()[-1]}", src, f"/models/{network}/1/model.pt"] in copies
    # The repository holds exactly the models the server loads.
    assert sorted(p.parent.name for p in DEFAULT_REPOSITORY.glob("*/config.pbtxt")) == sorted(MODELS)


def test_the_base_images_libtorch_reads_the_exported_models_file_format():
    steps = dockerfile(DOCKERFILE)
    image = only(steps, "FROM", final_stage(steps))[0].args
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", image)
    assert match and match[1] in NGC_LIBTORCH, f"{image}: add its libtorch and file-format range to NGC_LIBTORCH"
    libtorch, newest_readable = NGC_LIBTORCH[match[1]]
    model_pt = DEFAULT_REPOSITORY / contract.NETWORK_MODEL / "1" / "model.pt"
    with zipfile.ZipFile(model_pt) as archive:
        # "<archive>/version", or "<archive>/.data/version" from format 6 on (caffe2/serialize/inline_container.cc)
        (record,) = [n for n in archive.namelist()
                     if n.endswith("/.data/version") or (n.endswith("/version") and n.count("/") == 1)]
        written = int(archive.read(record))
    assert written <= newest_readable, f"model.pt is file format {written}; {image}'s libtorch {libtorch} reads up to {newest_readable}"
    # What the docs say is what the archive records.
    assert f"The export writes format {written} " in (DOCKER / "README.md").read_text()
    assert f"file format {written}, which every libtorch 2.x reads" in DOCKERFILE.read_text()


def pins(requirements) -> dict[str, str]:
    out = {}
    for req in requirements:
        match = re.fullmatch(r'"?([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^"\s]+)"?', req.strip())
        if match:
            out[match[1].lower()] = match[3].split("+")[0]
    return out


def pip_pins(path: Path) -> list[dict[str, str]]:
    return [pins(i.args.split()) for i in only(dockerfile(path), "RUN") if "pip install" in i.args]


def test_image_pins_are_the_projects():
    metadata = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    project = pins(metadata["dependencies"] + metadata["optional-dependencies"]["gpu"])
    export_stage, runtime = pip_pins(DOCKERFILE)
    for name in ("torch", "torchvision", "numpy", "pillow"):
        assert export_stage[name] == project[name], name
    served = ("numpy", "pillow", "pillow-heif", "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg", "cupy-cuda13x")
    assert runtime == {name: project[name] for name in served}, \
        "the runtime installs exactly what iqa.preprocess imports, at the project's pins"
    assert int(runtime["numpy"].split(".")[0]) < 2, "numpy 2 empties Python-backend outputs"
    (locust,) = pip_pins(LOCUST_DOCKERFILE)
    assert locust["tritonclient"] == project["tritonclient"] and locust["numpy"] == project["numpy"]


def copy_into(root: Path, workdir: str, instruction: Instruction) -> None:
    """Docker's COPY from the build context: a directory's contents, or files into a directory."""
    *sources, dest = instruction.args.split()
    target = root / (dest if dest.startswith("/") else f"{workdir}/{dest}").lstrip("/")
    for source in sources:
        path = REPO / source
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)


def import_in_layout(path_entries: list[Path], code: str) -> subprocess.CompletedProcess:
    """Run code with only these directories plus the venv's third-party packages importable: no site
    processing (-S), so the editable installs of iqa / iqa_client in .venv are not visible."""
    third_party = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    prelude = f"import sys; sys.path[:] = {[str(p) for p in path_entries] + [str(third_party)]!r} + " \
              "[p for p in sys.path if 'site-packages' not in p and p not in ('', '.')]\n"
    return subprocess.run([sys.executable, "-S", "-c", prelude + code], capture_output=True, text=True,
                          cwd=path_entries[0], timeout=120)


def test_the_export_stage_imports_the_export_from_what_it_copies(tmp_path):
    steps = dockerfile(DOCKERFILE)
    (workdir,) = only(steps, "WORKDIR", 0)
    for copy in only(steps, "COPY", 0):
        copy_into(tmp_path, workdir.args, copy)
    src = tmp_path / workdir.args.lstrip("/")
    result = import_in_layout([src], "import conversion.export, sys\n"
                                     "assert conversion.export.__file__.startswith(sys.path[0]), conversion.export.__file__\n"
                                     "assert 'tritonclient' not in sys.modules and 'iqa_client.client' not in sys.modules\n")
    assert result.returncode == 0, result.stderr


def test_the_runtime_image_holds_exactly_what_the_preprocess_model_and_the_watchdog_import(tmp_path):
    """The final stage copies modules to /tmp/<package>/ and moves them into site-packages; here that
    layout imports model.py and the watchdog (the entry point) with numpy and Pillow only: no torch,
    no gRPC client."""
    steps = dockerfile(DOCKERFILE)
    last = final_stage(steps)
    site = tmp_path / "site-packages"
    staged = [c for c in only(steps, "COPY", last) if re.fullmatch(r"/tmp/[\w/]+/", c.args.split()[-1])]
    assert {c.args.split()[-1] for c in staged} == {"/tmp/iqa/", "/tmp/iqa/serving/", "/tmp/iqa_client/"}
    for copy in staged:  # /tmp/<package>/ -> site-packages/<package>/, as the RUN after them does
        copy_into(site, "/", Instruction(last, "COPY", copy.args.replace(" /tmp/", " /")))
    assert not (site / "iqa_client" / "__init__.py").exists(), "iqa_client's __init__ imports the gRPC client"
    model = DEFAULT_REPOSITORY / contract.PREPROCESS_MODEL / "1" / "model.py"
    code = ("import sys, types, importlib.util\n"
            "sys.modules['triton_python_backend_utils'] = types.ModuleType('triton_python_backend_utils')\n"
            f"spec = importlib.util.spec_from_file_location('model', {str(model)!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "import iqa, iqa.serving.watchdog\n"
            "assert iqa.__file__.startswith(sys.path[0]), iqa.__file__\n"
            "loaded = {m for m in sys.modules if m.split('.')[0] in ('iqa', 'iqa_client')}\n"
            "heavy = {m for m in ('torch', 'torchvision', 'tritonclient', 'grpc') if m in sys.modules}\n"
            "print(sorted(loaded)); assert not heavy, heavy\n")
    result = import_in_layout([site], code)
    assert result.returncode == 0, result.stderr
    copied = {".".join(p.relative_to(site).with_suffix("").parts).removesuffix(".__init__") for p in site.rglob("*.py")}
    assert set(ast.literal_eval(result.stdout.strip())) == copied | {"iqa_client"}, "every copied module is used"
    # Into site-packages, since the stub ignores PYTHONPATH; verified by importing at build time.
    install = " ".join(i.args for i in only(steps, "RUN", last))
    assert "import iqa.contract, iqa.preprocess, iqa.serving.watchdog" in install
    assert not any("PYTHONPATH" in i.args for i in only(steps, "ENV", last)), "the stub would not see it"


# What each third-party module the served Python code imports is installed as, in the image's Python.
IMAGE_DISTRIBUTIONS = {"numpy": "numpy", "PIL": "pillow", "pillow_heif": "pillow-heif",
                       "nvidia.nvimgcodec": "nvidia-nvimgcodec-cu13", "cupy": "cupy-cuda13x"}
# Provided by the Python backend itself (the stub), not by a package.
BACKEND_MODULES = {"triton_python_backend_utils"}


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (functions included: a lazy import runs too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {f"{node.module}.{alias.name}" if node.module == "nvidia" else node.module for alias in node.names}
    return names


def third_party_imports(entry: Path) -> set[str]:
    """The non-project, non-stdlib modules reachable from `entry` through the project's own modules."""
    seen, todo, found = set(), [entry], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in ("iqa", "iqa_client"):
                parts = name.split(".")
                module = REPO.joinpath(*(["client"] if top == "iqa_client" else []), *parts)
                todo += [p for p in (module.with_suffix(".py"), module / "__init__.py") if p.is_file()]
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(name if top == "nvidia" else top)
    return found


def test_every_import_of_every_served_model_py_is_installed_in_the_image(tmp_path):
    """Lazy imports included (RegionDecoder's used to import torch, which the image's Python lacks, so the GPU
    decode silently never ran): each model.py's reachable third-party imports are packages the image installs."""
    _, runtime = pip_pins(DOCKERFILE)
    entries = sorted(DEFAULT_REPOSITORY.glob("*/1/model.py"))
    assert len(entries) == 2, entries
    for model_py in entries:
        imported = third_party_imports(model_py) - BACKEND_MODULES
        missing = {name for name in imported if IMAGE_DISTRIBUTIONS.get(name) not in runtime}
        assert not missing, f"{model_py.relative_to(REPO)} imports {sorted(missing)}, which docker/Dockerfile does not install"
    assert "cupy" in third_party_imports(DEFAULT_REPOSITORY / contract.PREPROCESS_MODEL / "1" / "model.py")
    # The check sees a lazy import of a package the image lacks.
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    import torch\n    from nvidia import nvimgcodec\n")
    assert third_party_imports(lazy) == {"torch", "nvidia.nvimgcodec"}


# --- .dockerignore ----------------------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """Docker's matcher: last matching rule wins; a rule matches a path or any of its parents;
    `*` and `?` stay within one path segment, `**` spans any number."""
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            else:
                regex += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        rules.append((keep, re.compile(regex)))
    return rules


def in_context(path: str, rules) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    sent = True
    for keep, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            sent = keep
    return sent


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_heavy():
    rules = dockerignore_rules()
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"]).stdout.split()
    assert files, "git ls-files listed nothing"
    sent = {f for f in files if in_context(f, rules)}
    steps = dockerfile(DOCKERFILE)
    for copy in only(steps, "COPY"):
        args = copy.args.split()
        if args[0].startswith("--from"):
            continue
        for source in args[:-1]:
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in sent), f"COPY {source}: not in context"
    for f in files:
        if f.startswith("model_repository/") or re.fullmatch(r"tests/data/.*\.jpg", f):
            assert f in sent, f
    assert in_context("training/weights/iqa_resnet50.fp16.pt", rules), "trained weights must reach the export"
    for heavy in (".venv/bin/python", ".venv-deploy/bin/checkov", ".run/repository/x", ".git/HEAD",
                  "model_repository/iqa_resnet50/1/model.pt", "model_repository/iqa_resnet50_cells/1/model.pt",
                  "iqa/__pycache__/contract.cpython-311.pyc",
                  "training/data/photo.jpg", "loadtest/bench.py", "README.md"):
        assert not in_context(heavy, rules), f"{heavy} would be sent to the builder"


# --- agreement across Dockerfile, compose and manifests -----------------------------------------------


def test_ports_agree_everywhere(compose, manifests):
    steps = dockerfile(DOCKERFILE)
    options = flags(server_command(steps))
    assert {name: int(options[f"--{name}-port"][0]) for name in PORTS} == PORTS
    assert options["--http-port"] == [str(HTTP_PORT)] and options["--http-address"] == ["127.0.0.1"]
    # Triton 2.73 (the image) refuses HTTP bodies above this before any model sees them (--http-max-input-size,
    # from 2.59 on); gRPC has no such limit in any release, and watchdog.confined keeps a region from growing.
    assert options["--http-max-input-size"] == [str(contract.MAX_REQUEST_BYTES)]
    assert options["--metrics-address"] == ["0.0.0.0"], "metrics would follow --http-address to the loopback"
    assert Ports() == Ports(http=HTTP_PORT, **PORTS), "the local launcher's defaults"
    (expose,) = only(steps, "EXPOSE", final_stage(steps))
    assert sorted(int(p) for p in expose.args.split()) == sorted([*PORTS.values(), HEALTH_PORT])
    assert sorted(compose["services"]["triton"]["ports"]) == sorted(f"{p}:{p}" for p in PORTS.values())
    container = server_container(manifests)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {**PORTS, "health": HEALTH_PORT}
    services = {name: s for (kind, name), s in manifests.items() if kind == "Service"}
    assert {p["name"]: (p["port"], p["targetPort"]) for p in services["iqa-triton"]["spec"]["ports"]} == \
        {name: (port, name) for name, port in PORTS.items()}
    for service in services.values():
        grpc = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc and grpc[0]["appProtocol"] == GRPC_APP_PROTOCOL and grpc[0]["port"] == PORTS["grpc"]
    assert services["iqa-triton-grpc"]["spec"]["clusterIP"] == "None"
    (policy,) = [v for (kind, _), v in manifests.items() if kind == "NetworkPolicy"]
    assert sorted(p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]) == \
        sorted([*PORTS.values(), HEALTH_PORT])
    locust = compose["services"]["locust"]
    assert locust["environment"]["LOCUST_HOST"] == f"triton:{PORTS['grpc']}"
    assert locust["environment"]["LOCUST_LOCUSTFILE"] == "loadtest/locustfile.py"
    assert locust["depends_on"]["triton"]["condition"] == "service_healthy"


def test_health_checks_and_probes_agree(compose, manifests):
    steps = dockerfile(DOCKERFILE)
    (healthcheck,) = only(steps, "HEALTHCHECK")
    ready_url = f"http://127.0.0.1:{HEALTH_PORT}/ready"
    image_check = json.loads(healthcheck.args[healthcheck.args.index("CMD") + 3:].strip())
    assert ready_url in image_check[-1]
    compose_check = compose["services"]["triton"]["healthcheck"]
    assert compose_check["test"] == ["CMD", *image_check], "compose runs the image's own health check"
    assert "--strict-readiness" in flags(server_command(steps))  # ready = every model ready
    container = server_container(manifests)
    # Every probe asks the watchdog: Triton's own endpoints stay true with a dead stub.
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": "health"}, probe
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["health"] == HEALTH_PORT
    watchdog = image_command(steps)
    assert watchdog[:3] == ["python3", "-m", "iqa.serving.watchdog"]
    assert f"--health-port={HEALTH_PORT}" in watchdog and f"--http-port={HTTP_PORT}" in watchdog

def test_one_start_up_budget_everywhere(compose, manifests):
    """Load + warm-up time allowed before a server counts as failed: iqa/serving/watchdog.py START_TIMEOUT_S."""
    steps = dockerfile(DOCKERFILE)
    (healthcheck,) = only(steps, "HEALTHCHECK")
    assert seconds(re.search(r"--start-period=(\S+)", healthcheck.args)[1]) == START_TIMEOUT_S
    assert seconds(compose["services"]["triton"]["healthcheck"]["start_period"]) == START_TIMEOUT_S
    assert f"--start-timeout={START_TIMEOUT_S}" in image_command(steps)
    startup = server_container(manifests)["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == START_TIMEOUT_S


def test_shared_memory_settings_are_the_ones_derived_in_the_contract(compose, manifests):
    """iqa/contract.py derives the region sizes and /dev/shm from the largest accepted request
    (tests/test_production_repository.py sends one); every deployment file must carry those numbers."""
    options = flags(server_command(dockerfile(DOCKERFILE)))
    assert sorted(options["--backend-config"]) == sorted([f"python,shm-default-byte-size={contract.SHM_DEFAULT_BYTES}",
                                                         f"python,shm-growth-byte-size={contract.SHM_GROWTH_BYTES}",
                                                         "python,shm-region-prefix-name=iqa_triton_"])
    # The watchdog (the entry point) removes regions a killed server left under this prefix before it
    # starts the server (tests/test_faults.py); without a prefix it would have nothing it could call its own.
    assert shm_region_prefix(server_command(dockerfile(DOCKERFILE))) == "iqa_triton_"
    compose_shm = quantity_bytes(compose["services"]["triton"]["shm_size"])
    pod = deployment(manifests)["spec"]["template"]["spec"]
    (dshm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"]["medium"] == "Memory"
    k8s_shm = quantity_bytes(dshm["emptyDir"]["sizeLimit"])
    prove_shm = quantity_bytes(re.search(r"--shm-size (\S+)", (DOCKER / "prove.sh").read_text())[1])
    assert compose_shm == k8s_shm == prove_shm == contract.SHM_LIMIT_BYTES
    mounts = {m["mountPath"]: m["name"] for m in server_container(manifests)["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm"
    for model, instances in ((contract.PREPROCESS_MODEL, contract.PREPROCESS_INSTANCES),
                             (contract.MAP_PREPROCESS_MODEL, contract.MAP_PREPROCESS_INSTANCES)):
        config = text_format.Parse((DEFAULT_REPOSITORY / model / "config.pbtxt").read_text(), pb.ModelConfig())
        assert sum(g.count for g in config.instance_group) == instances, model


def test_the_memory_limit_is_the_sum_derived_in_the_contract(compose, manifests):
    """iqa/contract.py adds up six decoders' worst decode, their stubs, /dev/shm (tmpfs pages count against the
    limit) and Triton; the Deployment (request = limit), compose and prove.sh give the server exactly that."""
    resources = server_container(manifests)["resources"]
    assert quantity_bytes(resources["limits"]["memory"]) == quantity_bytes(resources["requests"]["memory"]) \
        == contract.POD_MEMORY_BYTES
    assert quantity_bytes(compose["services"]["triton"]["deploy"]["resources"]["limits"]["memory"]) == \
        contract.POD_MEMORY_BYTES
    assert quantity_bytes(re.search(r"--memory (\S+)", (DOCKER / "prove.sh").read_text())[1]) == contract.POD_MEMORY_BYTES
    decoders = contract.PREPROCESS_INSTANCES + contract.MAP_PREPROCESS_INSTANCES
    parts = decoders * (contract.DECODE_PEAK_BYTES + contract.STUB_RESTING_BYTES) + contract.SHM_LIMIT_BYTES + \
        contract.SERVER_BYTES
    assert parts <= contract.POD_MEMORY_BYTES < parts + 2**30
    assert contract.DECODE_PEAK_BYTES >= contract.MAX_IMAGE_PIXELS * contract.DECODE_PEAK_BYTES_PER_PIXEL


def test_grpc_connections_are_aged_so_new_replicas_get_traffic():
    options = flags(server_command(dockerfile(DOCKERFILE)))
    assert options["--grpc-max-connection-age"] == [str(GRPC_MAX_CONNECTION_AGE_MS)]
    assert options["--grpc-max-connection-age-grace"] == [str(GRPC_MAX_CONNECTION_AGE_GRACE_MS)]
    # In-flight calls finish within the grace: at least the longest an accepted request may wait in the
    # queues of both composing models (their queue policies' timeouts), with room for the executions.
    queue_ms = sum(text_format.Parse((DEFAULT_REPOSITORY / model / "config.pbtxt").read_text(), pb.ModelConfig())
                   .dynamic_batching.default_queue_policy.default_timeout_microseconds // 1000
                   for model in (contract.PREPROCESS_MODEL, contract.NETWORK_MODEL))
    assert GRPC_MAX_CONNECTION_AGE_GRACE_MS >= 2 * queue_ms


def test_network_policy_lets_dns_out_and_nothing_else(manifests):
    (policy,) = [v for (kind, _), v in manifests.items() if kind == "NetworkPolicy"]
    assert "Egress" in policy["spec"]["policyTypes"]
    (rule,) = policy["spec"]["egress"]
    assert sorted((p["port"], p["protocol"]) for p in rule["ports"]) == [(DNS_PORT, "TCP"), (DNS_PORT, "UDP")]
    (peer,) = rule["to"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


def test_shutdown_outlasts_tritons_exit_timeout(compose, manifests):
    options = flags(server_command(dockerfile(DOCKERFILE)))
    assert options["--exit-timeout-secs"] == [str(EXIT_TIMEOUT_S)]
    pod = deployment(manifests)["spec"]["template"]["spec"]
    pre_stop = server_container(manifests)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + EXIT_TIMEOUT_S
    assert seconds(compose["services"]["triton"]["stop_grace_period"]) > EXIT_TIMEOUT_S


def test_non_root_read_only_and_gpu_agree(compose, manifests):
    steps = dockerfile(DOCKERFILE)
    (user,) = only(steps, "USER", final_stage(steps))
    uid, gid = (int(x) for x in user.args.split(":"))
    assert uid >= 10000
    pod = deployment(manifests)["spec"]["template"]["spec"]
    container = server_container(manifests)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["runAsGroup"] == gid
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    # The one writable place, and $HOME pointing at it, in the image, compose and the pod.
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert "emptyDir" in tmp and {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"] == "tmp"
    assert {"name": "HOME", "value": "/tmp"} in container["env"]
    assert "HOME=/tmp" in [i.args for i in only(steps, "ENV", final_stage(steps))]
    triton = compose["services"]["triton"]
    assert triton["read_only"] is True and triton["tmpfs"] == ["/tmp"]
    # One GPU per server, as the committed iqa_resnet50 (KIND_GPU) needs.
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]
    assert "kind: KIND_GPU" in (DEFAULT_REPOSITORY / contract.NETWORK_MODEL / "config.pbtxt").read_text()


def test_one_image_tag_everywhere(compose, kustomization, manifests):
    tag = kustomization["images"][0]["newTag"]
    assert server_container(manifests)["image"] == f"iqa-degradation:{tag}"
    assert compose["services"]["triton"]["image"] == f"iqa-degradation:{tag}"
    assert compose["services"]["triton"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == tag


def test_selectors_select_the_server_pods(manifests):
    pod_labels = deployment(manifests)["spec"]["template"]["metadata"]["labels"]
    deploy = deployment(manifests)
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    for (kind, name), doc in manifests.items():
        spec = doc.get("spec", {})
        selector = spec.get("selector") if kind == "Service" else \
            (spec.get("selector") or spec.get("podSelector") or {}).get("matchLabels") if kind in (
                "PodDisruptionBudget", "NetworkPolicy") else None
        if selector is not None:
            assert selector.items() <= pod_labels.items(), f"{kind}/{name} selects no server pod"


def test_autoscaling_reads_the_metric_the_adapter_exposes(yaml_docs, manifests):
    (hpa,) = [v for (kind, _), v in manifests.items() if kind == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment(manifests)["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    (values,) = yaml_docs[f"k8s/{ADAPTER_VALUES.name}"]
    rules = {r["name"]["as"]: r for r in values["rules"]["custom"]}
    rule = rules[metric["pods"]["metric"]["name"]]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    query = rule["metricsQuery"]
    assert "nv_inference_queue_duration_us{<<.LabelMatchers>>" in query
    assert "nv_inference_request_success{<<.LabelMatchers>>" in query
    assert f'model="{contract.ENSEMBLE_MODEL}"' in query
    assert f'model=~"{contract.PREPROCESS_MODEL}|{contract.NETWORK_MODEL}"' in query
    assert query.count("by (<<.GroupBy>>)") == 2
    # The documented GPU-utilisation alternative exists in the same values.
    assert "iqa_gpu_utilization" in rules and "nv_gpu_utilization" in rules["iqa_gpu_utilization"]["metricsQuery"]
    assert "iqa_gpu_utilization" in (K8S / "hpa.yaml").read_text()
    (pdb,) = [v for (kind, _), v in manifests.items() if kind == "PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


# --- the proof script's client, against the real local server -------------------------------------------


def test_prove_client_scores_through_the_local_server(triton):
    """docker/prove.sh runs this client against the image; here it runs against the test server."""
    result = run([sys.executable, DOCKER / "prove_client.py", "--url", triton.grpc_url, "--image", "tests/data/sheep.jpg",
                  "--metrics-url", f"http://127.0.0.1:{triton.ports.metrics}/metrics"])
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert set(scores) == set(contract.SCORE_NAMES) and all(0.0 <= v <= 1.0 for v in scores.values())
    # Without a GPU the launcher serves iqa_resnet50 on KIND_CPU instances: the GPU check must say so.
    result = run([sys.executable, DOCKER / "prove_client.py", "--url", triton.grpc_url, "--image", "tests/data/sheep.jpg",
                  "--expect-libtorch-gpu"])
    assert result.returncode == 1 and "not KIND_GPU" in result.stderr


def test_only_the_watchdog_can_load_or_unload_models():
    """The image's command line holds no admin secret: the watchdog adds the restriction flags with a
    secret drawn at start (tests/test_faults.py checks the refusal on a real server)."""
    image = " ".join(image_command(dockerfile(DOCKERFILE)))
    assert "restricted" not in image and "iqa-admin-key" not in image
    access = AdminAccess()
    flags_ = flags(["tritonserver", *access.server_flags()])
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        (value,) = flags_[flag]
        apis, _, header = value.partition(":")
        assert {"model-repository", "shared-memory"} <= set(apis.split(","))
        assert header == f"{access.key}={access.secret}" and len(access.secret) >= 24
    assert AdminAccess().secret != access.secret
