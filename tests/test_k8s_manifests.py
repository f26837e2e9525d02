"""Offline checks of the Kubernetes manifests in k8s/.

RayJob and RayCluster objects are validated against the KubeRay CRD schemas kept in
../shared/kuberay-crds (not part of this repo); core objects against the Kubernetes
OpenAPI schemas that ship with `kubernetes-validate`. The remaining tests pin down the
deployment contract: what the RayJob runs, that nothing is exposed outside the
cluster, that GPUs, autoscaling, token auth and the shared volume are configured.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "k8s"
CRD_DIR = REPO.parent / "shared" / "kuberay-crds"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
CORE_KINDS = {"PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy"}
# A release that current managed Kubernetes offerings run; kubernetes-validate ships it.
K8S_VERSION = "1.34.0"
EXPOSING_KINDS = {"Ingress", "Route", "Gateway", "HTTPRoute", "GRPCRoute", "TCPRoute"}
# Ray token authentication (RAY_AUTH_MODE=token) exists since Ray 2.52.
MIN_RAY_FOR_TOKEN_AUTH = (2, 52, 0)


# ---------------------------------------------------------------------------
# Loading


class Doc:
    """One YAML document from k8s/, with enough context to point at it in messages."""

    def __init__(self, path: Path, index: int, body: dict[str, Any]):
        self.path, self.index, self.body = path, index, body

    @property
    def kind(self) -> str:
        return self.body.get("kind", "?")

    def __str__(self) -> str:
        name = self.body.get("metadata", {}).get("name", "?")
        return f"{self.path.relative_to(REPO)} (document {self.index}, {self.kind}/{name})"


@functools.cache
def manifests() -> tuple[Doc, ...]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        with path.open() as f:
            for index, body in enumerate(yaml.safe_load_all(f)):
                if body is not None:
                    docs.append(Doc(path, index, body))
    return tuple(docs)


def docs_of(*kinds: str) -> list[Doc]:
    return [doc for doc in manifests() if doc.kind in kinds]


def ray_cluster_spec(doc: Doc) -> dict[str, Any]:
    """The RayClusterSpec of a RayCluster, or the one a RayJob creates."""
    spec = doc.body["spec"]
    return spec["rayClusterSpec"] if doc.kind == "RayJob" else spec


def ray_pod_templates(doc: Doc) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field path, pod template) for the head and every worker group."""
    prefix = "spec.rayClusterSpec" if doc.kind == "RayJob" else "spec"
    cluster = ray_cluster_spec(doc)
    yield f"{prefix}.headGroupSpec.template", cluster["headGroupSpec"]["template"]
    for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
        yield f"{prefix}.workerGroupSpecs[{i}].template", group["template"]


def all_pod_templates() -> Iterator[tuple[Doc, str, dict[str, Any]]]:
    for doc in docs_of("RayJob", "RayCluster"):
        for where, template in ray_pod_templates(doc):
            yield doc, where, template
    for doc in docs_of("Deployment"):
        yield doc, "spec.template", doc.body["spec"]["template"]


def the_rayjob() -> Doc:
    jobs = docs_of("RayJob")
    assert len(jobs) == 1, f"expected exactly one RayJob in {K8S_DIR.relative_to(REPO)}/"
    return jobs[0]


def entrypoint_argv(job: Doc) -> list[str]:
    return shlex.split(job.body["spec"]["entrypoint"])


def option_value(argv: list[str], option: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def pinned_ray_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r'"ray(?:\[[^\]]*\])?==([0-9.]+)"', text)
    assert match, "pyproject.toml: no exact `ray[...]==X.Y.Z` pin in [project].dependencies"
    return match.group(1)


# ---------------------------------------------------------------------------
# KubeRay CRD schema -> JSON Schema


def _adapt(node: Any) -> Any:
    """Turns a CRD's structural OpenAPI v3 schema into one `jsonschema` checks like the
    API server does.

    - `x-kubernetes-int-or-string` means "integer or string"; spelled out as anyOf where
      the CRD relies on the extension alone.
    - `nullable: true` admits null.
    - Objects with declared properties reject unknown fields, as `kubectl apply` does
      with its default strict field validation (the API server would otherwise drop
      them silently, hiding typos such as `shutdownAfterJobFinish`), unless the schema
      says `x-kubernetes-preserve-unknown-fields`.
    - `x-kubernetes-list-type: map` lists are checked for duplicate keys by
      `_list_map_keys_are_unique`. CEL rules (`x-kubernetes-validations`) are not
      evaluated.
    """
    if isinstance(node, list):
        return [_adapt(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in ("properties", "patternProperties"):
        if key in out:
            out[key] = {name: _adapt(sub) for name, sub in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _adapt(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = _adapt(out[key])
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_map_keys_are_unique(validator, keys, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    seen: dict[tuple, int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k) for k in keys)
        if key in seen:
            entry = dict(zip(keys, key, strict=True))
            yield jsonschema.ValidationError(
                f"duplicate list entry {entry} (items {seen[key]} and {i})"
            )
        seen[key] = i


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-list-map-keys": _list_map_keys_are_unique}
)


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR}; they are kept outside the repo")
    with (CRD_DIR / CRD_FILES[kind]).open() as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return CrdValidator(_adapt(v1["schema"]["openAPIV3Schema"]))


def crd_errors(doc_body: dict[str, Any]) -> list[str]:
    validator = crd_validator(doc_body["kind"])
    errors = sorted(validator.iter_errors(doc_body), key=lambda e: list(e.absolute_path))
    return [f"  {error.json_path}: {error.message}" for error in errors]


# ---------------------------------------------------------------------------
# Schema validation


def test_every_manifest_has_a_schema_check():
    assert manifests(), f"no manifests found in {K8S_DIR.relative_to(REPO)}/"
    for doc in manifests():
        assert doc.kind in set(CRD_FILES) | CORE_KINDS, (
            f"{doc}: no schema check for kind {doc.kind!r}; add it to CORE_KINDS or CRD_FILES"
        )


@pytest.mark.parametrize("doc", docs_of(*CRD_FILES), ids=str)
def test_ray_manifest_validates_against_kuberay_crd(doc: Doc):
    assert doc.body.get("apiVersion") == "ray.io/v1", f"{doc}: apiVersion must be ray.io/v1"
    errors = crd_errors(doc.body)
    assert not errors, f"{doc} does not match the KubeRay CRD schema:\n" + "\n".join(errors)


def test_crd_check_rejects_a_misspelled_field():
    job = copy.deepcopy(the_rayjob().body)
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    errors = crd_errors(job)
    assert any("shutdownAfterJobFinish" in e for e in errors), (
        "the CRD schema adapter accepted an unknown RayJob field; typos would go unnoticed"
    )


@pytest.mark.parametrize("doc", docs_of(*CORE_KINDS), ids=str)
def test_core_object_validates_against_kubernetes_schema(doc: Doc):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in the project's test extras"
    )
    try:
        kubernetes_validate.validate(doc.body, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(
            f"{doc} is not a valid Kubernetes {K8S_VERSION} object: "
            f"{error.json_path}: {error.message}"
        )


# ---------------------------------------------------------------------------
# What the RayJob runs


def test_rayjob_entrypoint_runs_raygan_tune_on_an_existing_search_space():
    job = the_rayjob()
    argv = entrypoint_argv(job)
    assert argv[:2] == ["raygan", "tune"], (
        f"{job}: spec.entrypoint should start with `raygan tune`, got {argv[:2]}"
    )
    name = argv[2] if len(argv) > 2 else "-"
    assert not name.startswith("-"), (
        f"{job}: spec.entrypoint names no search space right after `raygan tune`"
    )
    assert (REPO / name).is_file(), (
        f"{job}: spec.entrypoint names search space {name!r}, "
        f"but {REPO / name} does not exist in the repo"
    )


def test_rayjob_entrypoint_has_no_shell_syntax():
    # KubeRay runs the entrypoint inside a bash command line, so quoting, `$VAR`,
    # `;`, globs and the like would be interpreted there.
    job = the_rayjob()
    entrypoint = job.body["spec"]["entrypoint"]
    unsafe = [arg for arg in entrypoint_argv(job) if shlex.quote(arg) != arg]
    assert not unsafe and "\n" not in entrypoint, (
        f"{job}: spec.entrypoint must be plain words without shell syntax; "
        f"these need quoting: {unsafe}"
    )


def test_rayjob_driver_starts_in_the_image_copy_of_the_repo():
    job = the_rayjob()
    runtime_env = yaml.safe_load(job.body["spec"].get("runtimeEnvYAML", "")) or {}
    workdir = re.search(r"^WORKDIR\s+(\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert workdir, "Dockerfile: no WORKDIR, so the repo's location in the image is unknown"
    assert runtime_env.get("working_dir") == f"local://{workdir.group(1)}", (
        f"{job}: spec.runtimeEnvYAML working_dir should be local://{workdir.group(1)} "
        f"(the Dockerfile WORKDIR) so relative search-space paths resolve; "
        f"got {runtime_env.get('working_dir')!r}"
    )


def test_rayjob_deletes_its_cluster_when_done():
    job = the_rayjob()
    spec = job.body["spec"]
    assert spec.get("shutdownAfterJobFinishes") is True, (
        f"{job}: spec.shutdownAfterJobFinishes must be true, or GPU nodes outlive the search"
    )
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int), (
        f"{job}: spec.ttlSecondsAfterFinished must be set (seconds to keep the finished cluster)"
    )


# ---------------------------------------------------------------------------
# Cluster shape and security


def test_nothing_is_exposed_outside_the_cluster():
    for doc in manifests():
        assert doc.kind not in EXPOSING_KINDS, f"{doc}: {doc.kind} would expose a service"
    for doc in docs_of("Service"):
        service_type = doc.body["spec"].get("type", "ClusterIP")
        assert service_type == "ClusterIP", f"{doc}: spec.type is {service_type}, not ClusterIP"
    for doc in docs_of(*CRD_FILES):
        head = ray_cluster_spec(doc)["headGroupSpec"]
        service_types = [
            head.get("serviceType", "ClusterIP"),
            head.get("headService", {}).get("spec", {}).get("type", "ClusterIP"),
        ]
        assert service_types == ["ClusterIP", "ClusterIP"], (
            f"{doc}: headGroupSpec serviceType/headService type {service_types} "
            "would expose the dashboard; use ClusterIP and kubectl port-forward"
        )
        assert not head.get("enableIngress"), f"{doc}: headGroupSpec.enableIngress must be off"
    for doc, where, template in all_pod_templates():
        spec = template["spec"]
        assert not spec.get("hostNetwork"), f"{doc}: {where}.spec.hostNetwork exposes ports"
        for container in spec["containers"]:
            for port in container.get("ports", []):
                assert "hostPort" not in port, (
                    f"{doc}: {where} container {container['name']} publishes hostPort "
                    f"{port['hostPort']} on the node"
                )


def test_ray_token_authentication_is_enabled():
    for doc in docs_of(*CRD_FILES):
        cluster = ray_cluster_spec(doc)
        mode = cluster.get("authOptions", {}).get("mode")
        assert mode == "token", f"{doc}: authOptions.mode is {mode!r}, expected 'token'"
        version = tuple(int(p) for p in cluster.get("rayVersion", "0").split("."))
        assert version >= MIN_RAY_FOR_TOKEN_AUTH, (
            f"{doc}: rayVersion {cluster.get('rayVersion')!r} predates Ray token auth (2.52)"
        )


def test_ray_version_matches_the_ray_pinned_in_pyproject():
    pinned = pinned_ray_version()
    for doc in docs_of(*CRD_FILES):
        version = ray_cluster_spec(doc).get("rayVersion")
        assert version == pinned, (
            f"{doc}: rayVersion {version!r} differs from ray=={pinned} in pyproject.toml"
        )


def test_worker_groups_request_gpus():
    for doc in docs_of(*CRD_FILES):
        groups = ray_cluster_spec(doc).get("workerGroupSpecs", [])
        assert groups, f"{doc}: no workerGroupSpecs, so no GPU workers"
        for i, group in enumerate(groups):
            container = group["template"]["spec"]["containers"][0]
            gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)
            assert int(gpus) >= 1, (
                f"{doc}: workerGroupSpecs[{i}] ({group['groupName']}) container "
                f"{container['name']} has no resources.limits['nvidia.com/gpu']"
            )


def test_gpu_workers_autoscale():
    for doc in docs_of(*CRD_FILES):
        cluster = ray_cluster_spec(doc)
        assert cluster.get("enableInTreeAutoscaling") is True, (
            f"{doc}: enableInTreeAutoscaling must be true for GPU workers to scale"
        )
        for i, group in enumerate(cluster["workerGroupSpecs"]):
            assert group["maxReplicas"] > group.get("minReplicas", 0), (
                f"{doc}: workerGroupSpecs[{i}] maxReplicas {group['maxReplicas']} "
                f"leaves no room to scale above minReplicas {group.get('minReplicas', 0)}"
            )


def shared_claims() -> dict[str, Doc]:
    return {
        doc.body["metadata"]["name"]: doc
        for doc in docs_of("PersistentVolumeClaim")
        if "ReadWriteMany" in doc.body["spec"].get("accessModes", [])
    }


def claim_mount_paths(template: dict[str, Any], claims: set[str]) -> set[str]:
    """Where the pod template's first container mounts any of the given claims."""
    spec = template["spec"]
    volumes = {
        volume["name"]
        for volume in spec.get("volumes", [])
        if volume.get("persistentVolumeClaim", {}).get("claimName") in claims
    }
    return {
        mount["mountPath"]
        for mount in spec["containers"][0].get("volumeMounts", [])
        if mount["name"] in volumes
    }


def test_every_pod_mounts_the_shared_volume_at_the_same_path():
    claims = shared_claims()
    assert claims, f"{K8S_DIR.relative_to(REPO)}/ has no ReadWriteMany PersistentVolumeClaim"
    paths = {}
    for doc, where, template in all_pod_templates():
        mounted = claim_mount_paths(template, set(claims))
        assert len(mounted) == 1, (
            f"{doc}: {where} should mount one of the ReadWriteMany claims {sorted(claims)} "
            f"exactly once; found mount paths {sorted(mounted)}"
        )
        paths[f"{doc}: {where}"] = mounted.pop()
    assert len(set(paths.values())) == 1, (
        "pods mount the shared volume at different paths, so a path written by one "
        f"is not valid on another: {paths}"
    )


def test_search_results_land_on_the_shared_volume_tensorboard_reads():
    job = the_rayjob()
    storage = option_value(entrypoint_argv(job), "--storage")
    assert storage, f"{job}: spec.entrypoint has no --storage; results would stay node-local"
    _, head = next(ray_pod_templates(job))
    (mount,) = claim_mount_paths(head, set(shared_claims()))
    assert Path(storage).is_relative_to(mount), (
        f"{job}: --storage {storage} is not on the shared volume mounted at {mount}"
    )
    for doc in docs_of("Deployment"):
        command = doc.body["spec"]["template"]["spec"]["containers"][0].get("command", [])
        if command[:1] == ["tensorboard"]:
            logdir = option_value(command, "--logdir")
            assert logdir == storage, (
                f"{doc}: tensorboard --logdir {logdir} differs from the RayJob's "
                f"--storage {storage}"
            )


# ---------------------------------------------------------------------------
# Who reaches TensorBoard


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches every pod."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, values = expression["key"], expression.get("values", [])
        present, operator = key in labels, expression["operator"]
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and present and labels[key] in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


def tensorboard_pods() -> list[tuple[Doc, dict[str, Any]]]:
    pods = []
    for doc in docs_of("Deployment"):
        template = doc.body["spec"]["template"]
        if template["spec"]["containers"][0].get("command", [])[:1] == ["tensorboard"]:
            pods.append((doc, template))
    return pods


def policies_selecting(labels: dict[str, str]) -> list[Doc]:
    return [
        doc
        for doc in docs_of("NetworkPolicy")
        if selector_matches(doc.body["spec"]["podSelector"], labels)
        and "Ingress" in doc.body["spec"].get("policyTypes", ["Ingress"])
    ]


def open_ingress(policy: dict[str, Any]) -> list[str]:
    """Ingress rules that let in more than labelled pods of this namespace."""
    problems = []
    for i, rule in enumerate(policy["spec"].get("ingress", [])):
        peers = rule.get("from", [])
        if not peers:
            problems.append(f"ingress[{i}] has no `from`: every source is allowed")
        for j, peer in enumerate(peers):
            pods = peer.get("podSelector")
            if "ipBlock" in peer or "namespaceSelector" in peer or not pods:
                problems.append(f"ingress[{i}].from[{j}] is not a non-empty podSelector alone")
            elif not pods.get("matchLabels") and not pods.get("matchExpressions"):
                problems.append(f"ingress[{i}].from[{j}] selects every pod")
    return problems


def test_tensorboard_is_reachable_only_from_pods_labelled_for_it():
    pods = tensorboard_pods()
    assert pods, f"no TensorBoard Deployment in {K8S_DIR.relative_to(REPO)}/"
    for doc, template in pods:
        policies = policies_selecting(template["metadata"]["labels"])
        assert policies, f"{doc}: no NetworkPolicy selects its pods, so every pod can reach it"
        for policy in policies:
            problems = open_ingress(policy.body)
            assert not problems, f"{policy}: " + "; ".join(problems)


def test_the_open_ingress_check_rejects_an_allow_all_rule():
    (policy,) = policies_selecting(tensorboard_pods()[0][1]["metadata"]["labels"])
    opened = copy.deepcopy(policy.body)
    opened["spec"]["ingress"] = [{}]
    assert open_ingress(opened), "an ingress rule without `from` passed as restricted"
    opened["spec"]["ingress"] = [{"from": [{"namespaceSelector": {}}]}]
    assert open_ingress(opened), "a rule admitting every namespace passed as restricted"


def test_tensorboard_policy_admits_its_port_and_not_the_ray_pods():
    for doc, template in tensorboard_pods():
        ports = template["spec"]["containers"][0]["ports"]
        served = {p["containerPort"] for p in ports} | {p.get("name") for p in ports}
        for policy in policies_selecting(template["metadata"]["labels"]):
            for i, rule in enumerate(policy.body["spec"].get("ingress", [])):
                allowed = {port.get("port") for port in rule.get("ports", [])}
                assert allowed and allowed <= served, (
                    f"{policy}: ingress[{i}] ports {allowed} should be TensorBoard's {served}"
                )
                # Ray pods run trial code (user model factories): keep them out.
                for ray_doc, where, ray_template in all_pod_templates():
                    labels = ray_template.get("metadata", {}).get("labels", {})
                    admitted = any(
                        selector_matches(peer["podSelector"], labels)
                        for peer in rule.get("from", [])
                        if "podSelector" in peer
                    )
                    assert ray_doc is doc or not admitted, (
                        f"{policy}: ingress[{i}] admits {ray_doc} {where}"
                    )
