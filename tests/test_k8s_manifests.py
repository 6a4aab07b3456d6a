"""The Kubernetes manifests in k8s/: they parse, KubeRay objects validate against the KubeRay CRD
schemas in k8s/crds/ (copied in, with their source), core objects against Kubernetes' own schemas
(kubernetes-validate), every reference between them resolves, Secrets hold placeholders only,
and the image, entrypoint and config paths they name exist in this repo."""
import copy
import fnmatch
import functools
import glob
import os
import re
import shlex
import tomllib

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import REPO_ROOT

K8S = os.path.join(REPO_ROOT, "k8s")
CRDS = os.path.join(REPO_ROOT, "k8s", "crds")  # copied in: k8s/crds/SOURCE.md
KUBERNETES_VERSION = "1.33"
IMAGE_ROOT = "/app"  # the Dockerfile's WORKDIR, where the repo's files are copied


def load_objects() -> list[dict]:
    objects = []
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    objects.append(dict(doc, _file=os.path.basename(path)))
    return objects


OBJECTS = load_objects()


def of_kind(kind: str) -> list[dict]:
    return [o for o in OBJECTS if o["kind"] == kind]


def clean(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "_file"}


def test_every_manifest_parses_into_named_namespaced_objects():
    files = {o["_file"] for o in OBJECTS}
    assert {"namespace.yaml", "secrets.yaml", "settings.yaml", "workspace.yaml", "postgres.yaml",
            "mlflow.yaml", "raycluster.yaml", "rayjob.yaml"} <= files
    for obj in OBJECTS:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj["_file"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "understudy", (obj["_file"], obj["kind"])


# ---- KubeRay objects against the CRD schemas --------------------------------------------------

@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    path = os.path.join(CRDS, f"ray.io_{kind.lower()}s.yaml")
    with open(path) as f:  # over a megabyte of YAML: the C parser where there is one
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def strict(schema):
    """Reject unknown fields, as `kubectl apply` (strict field validation) does; the CRD's
    schema alone would let a misspelt field through to be silently dropped."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_objects_validate_against_the_crd_schemas(kind):
    objects = of_kind(kind)
    assert len(objects) == 1
    crd_validator(kind).validate(clean(objects[0]))


def test_the_crd_validation_catches_mistakes():
    """The schema check is not vacuous: a misspelt field and a wrong type are rejected."""
    validator = crd_validator("RayCluster")
    cluster = clean(of_kind("RayCluster")[0])
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    for bad in (typo, wrong_type):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_raycluster_has_head_cpu_and_gpu_groups_with_bounds_and_requests():
    spec = of_kind("RayCluster")[0]["spec"]
    assert spec["rayVersion"] == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    assert groups["cpu"]["maxReplicas"] > groups["cpu"]["minReplicas"]
    assert groups["gpu"]["maxReplicas"] >= 1
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) >= 1
    for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in groups.values()]:
        for container in template["spec"]["containers"]:
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_rayjob_runs_an_experiment_on_the_same_cluster_and_shuts_it_down():
    job = of_kind("RayJob")[0]["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] >= 0
    assert job["rayClusterSpec"] == of_kind("RayCluster")[0]["spec"], \
        "rayjob.yaml's cluster spec drifted from raycluster.yaml"
    # The job's runtime env is the repo's runtime_env.yaml one (env vars, no credentials).
    with open(os.path.join(REPO_ROOT, "runtime_env.yaml")) as f:
        runtime_env = yaml.safe_load(f)
    assert yaml.safe_load(job["runtimeEnvYAML"])["env_vars"] == runtime_env["env_vars"]


# ---- core objects against the Kubernetes schemas ----------------------------------------------

def pod_templates(obj: dict) -> list[dict]:
    if obj["kind"] == "Deployment":
        return [obj["spec"]["template"]]
    spec = obj["spec"].get("rayClusterSpec", obj["spec"])
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("obj", [o for o in OBJECTS if not o["apiVersion"].startswith("ray.io/")],
                         ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_core_objects_validate_against_kubernetes_schemas(obj):
    kubernetes_validate.validate(clean(obj), KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("obj", of_kind("RayCluster") + of_kind("RayJob"), ids=lambda o: o["kind"])
def test_ray_pod_templates_validate_as_kubernetes_pod_templates(obj):
    for i, template in enumerate(pod_templates(obj)):
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": f"t{i}", "namespace": "understudy"}, "template": template}
        kubernetes_validate.validate(wrapper, KUBERNETES_VERSION, strict=True)


# ---- references, credentials, and what the manifests name in the repo -------------------------

def containers() -> list[tuple[dict, dict]]:
    return [(obj, c) for obj in OBJECTS if obj["kind"] in ("Deployment", "RayCluster", "RayJob")
            for t in pod_templates(obj) for c in t["spec"]["containers"]]


def test_every_secret_configmap_and_volume_reference_resolves():
    secrets = {o["metadata"]["name"]: set(o["stringData"]) for o in of_kind("Secret")}
    configmaps = {o["metadata"]["name"] for o in of_kind("ConfigMap")}
    claims = {o["metadata"]["name"] for o in of_kind("PersistentVolumeClaim")}
    for obj, container in containers():
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets, (obj["_file"], source)
            else:
                assert source["configMapRef"]["name"] in configmaps, (obj["_file"], source)
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], ()), (obj["_file"], ref)
    for obj in OBJECTS:
        if obj["kind"] in ("Deployment", "RayCluster", "RayJob"):
            for template in pod_templates(obj):
                for volume in template["spec"].get("volumes", []):
                    if "persistentVolumeClaim" in volume:
                        assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_secrets_hold_placeholders_and_credentials_come_only_from_secrets():
    for secret in of_kind("Secret"):
        assert "data" not in secret, "base64 values would be real credentials"
        assert all(v == "REPLACE_ME" for v in secret["stringData"].values()), secret["metadata"]
    secret_names = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)", re.I)
    for obj, container in containers():
        for env in container.get("env", []):
            if secret_names.search(env["name"]):
                assert "valueFrom" in env, f"{obj['_file']}: {env['name']} set to a literal"
    for configmap in of_kind("ConfigMap"):
        assert not [k for k in configmap["data"] if secret_names.search(k)], configmap["metadata"]
    # A URI with a password in it is assembled from Secret-backed variables only.
    mlflow = next(c for o, c in containers() if c["name"] == "mlflow")
    store = next(e["value"] for e in mlflow["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert store.startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")


def project() -> dict:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_images_are_built_from_the_repo_dockerfile():
    dockerfile = os.path.join(REPO_ROOT, "Dockerfile")
    assert os.path.isfile(dockerfile)
    with open(dockerfile) as f:
        text = f.read()
    assert re.search(rf"^WORKDIR {IMAGE_ROOT}$", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert os.path.exists(os.path.join(REPO_ROOT, source)), f"Dockerfile copies {source}"
    assert "torch==2.13.0" in text and "whl/cpu" in text  # the CPU build, pinned
    version = project()["version"]
    ours = {c["image"] for _, c in containers() if c["image"].startswith("understudy:")}
    assert ours == {f"understudy:{version}", f"understudy:{version}-gpu"}


def test_rayjob_entrypoint_is_a_valid_understudy_command_on_a_ready_experiment():
    from understudy.platform import experiment
    from understudy.platform.cli import parser

    argv = shlex.split(of_kind("RayJob")[0]["spec"]["entrypoint"])
    assert argv[0] in project()["scripts"]
    args = parser().parse_args(argv[1:])
    assert args.command == "experiment"  # the example runs a ready experiment, by its bare name:
    assert args.config in experiment.available()  # the image has no source tree, only the package
    experiment.load(args.config, args.scale)  # a config that validates at that scale, not just a file


def test_mlflow_server_and_settings_agree_on_names_and_storage():
    service = next(o for o in of_kind("Service") if o["metadata"]["name"] == "mlflow")
    settings = next(o for o in of_kind("ConfigMap") if o["metadata"]["name"] == "understudy-settings")
    port = service["spec"]["ports"][0]["port"]
    assert settings["data"]["MLFLOW_TRACKING_URI"] == f"http://mlflow.understudy.svc:{port}"
    mlflow = next(c for o, c in containers() if c["name"] == "mlflow")
    assert mlflow["command"] == ["mlflow", "server"]
    args = dict(a.removeprefix("--").split("=", 1) for a in mlflow["args"])
    assert args["port"] == str(port) and args["artifacts-destination"].startswith("s3://")
    # The server accepts the Host header its clients send (MLflow matches with fnmatch).
    host = settings["data"]["MLFLOW_TRACKING_URI"].split("://", 1)[1]
    assert any(fnmatch.fnmatch(host, pattern) for pattern in args["allowed-hosts"].split(","))
    storage = settings["data"]["UNDERSTUDY_STORAGE"]
    assert storage.startswith("s3://")
    # The head mounts the workspace volume where UNDERSTUDY_WORKSPACE points.
    head = of_kind("RayCluster")[0]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in head["volumeMounts"]}
    assert mounts["workspace"] == settings["data"]["UNDERSTUDY_WORKSPACE"]


def test_k8s_readme_has_the_commands():
    with open(os.path.join(K8S, "README.md")) as f:
        readme = f.read()
    for name in ("namespace", "secrets", "settings", "workspace", "postgres", "mlflow",
                 "raycluster", "rayjob"):
        assert f"k8s/{name}.yaml" in readme, name
    assert "docker build" in readme and "ray job submit" in readme
