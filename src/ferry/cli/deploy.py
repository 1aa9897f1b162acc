"""Deployment commands: containerize, compose, k8s, fetch, index, deploy, undeploy, status.

Each renders with ``ferry.deploy``, then writes or acts; ``register(app)`` adds them to the main CLI.
Only ``ferry.deploy.spec`` (the options' defaults) loads with the CLI: every command imports its renderers
itself, so ``ferry --version`` or ``ferry build`` does not pay for urllib, PyYAML and the Dockerfile code.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from ferry.cli.errors import run as _run
from ferry.deploy.spec import (
    CLUSTER_REPLICAS,
    DEFAULT_BASE_IMAGE,
    GRPC_PORT,
    NGINX_IMAGE,
    PUBLISHED_HTTP_PORT,
    DeploySpec,
    Resources,
    Scaling,
)
from ferry.errors import SpecError
from ferry.settings import Settings

if TYPE_CHECKING:
    from ferry.deploy.addons import Addons
    from ferry.deploy.kubectl import Status

console = Console(stderr=True)
T = TypeVar("T")

Repo = Annotated[Path, typer.Argument(help="Model repository folder.")]
OptionalRepo = Annotated[
    Path | None, typer.Argument(help="Model repository folder (checked for bundles unless --model-uri is given).")
]
Image = Annotated[str, typer.Option("--image", help="Image reference, IMAGE:TAG.")]
Name = Annotated[str, typer.Option(help="Name of the Deployment, Service and friends.")]
Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Kubernetes namespace.")]
Replicas = Annotated[int, typer.Option(help="Replicas (the autoscaler's minimum).")]
ModelUri = Annotated[str, typer.Option(help="Model-load mode: fetch bundles from this URI at start-up.")]
ServiceType = Annotated[str, typer.Option(help="LoadBalancer, ClusterIP or NodePort.")]
Context = Annotated[str | None, typer.Option("--context", help="kubectl context (default: the current one).")]
TrustCode = Annotated[
    bool,
    typer.Option(help="Serve with FERRY_TRUST_CODE: import the bundles' Python classes (and load pickles)."),
]


def containerize_command(
    repo: Repo,
    tag: Annotated[str, typer.Option("--tag", "-t", help="Image reference, IMAGE:TAG.")],
    out: Annotated[Path, typer.Option("--output", "-o", help="Build context folder to write.")] = Path("build"),
    base_image: Annotated[str, typer.Option(help="Base image (a Python 3.11 Debian image).")] = DEFAULT_BASE_IMAGE,
    models: Annotated[bool, typer.Option(help="Copy the bundles in; --no-models for model-load mode.")] = True,
    source: Annotated[str, typer.Option(help="Source URL for the OCI label.")] = "",
    build: Annotated[bool, typer.Option(help="Build the image with docker (or podman).")] = False,
    push: Annotated[bool, typer.Option(help="Push the image after building.")] = False,
    extra: Annotated[
        list[str] | None, typer.Option(help="Also install this Ferry extra (tracing, fetch); repeatable.")
    ] = None,
    trust_code: TrustCode = DeploySpec.trust_code,
    original_models: Annotated[
        bool,
        typer.Option(
            help="Serve the original artifacts (installs scikit-learn/LightGBM) even where a bundle is compiled."
        ),
    ] = Settings.original_models,
    allow_requirement_options: Annotated[
        bool,
        typer.Option(
            help="Install a bundle's requirement lines that are not package specifiers (pip options such as "
            "--extra-index-url, URLs, paths): they change where the image's packages come from."
        ),
    ] = False,
) -> None:
    """Write a Docker build context for REPO: Dockerfile, .dockerignore, pinned requirements, models."""
    from ferry.deploy import dockerfile, image

    spec = _run(
        lambda: dockerfile.image_spec_for(
            repo,
            tag,
            include_models=models,
            base_image=base_image,
            source=source or _git_remote(repo),
            extras=tuple(extra or ()),
            trust_code=trust_code,
            original_models=original_models,
            allow_requirement_options=allow_requirement_options,
        )
    )
    for path in _run(lambda: dockerfile.write_build_context(repo, out, spec)):
        console.print(f"[green]wrote[/green] {path}")
    if build or push:
        engine = _run(image.find_engine)
        _run(lambda: image.run_streamed(image.build_argv(engine, out, tag)))
        console.print(f"[green]built[/green] {tag}")
        if push:
            _run(lambda: image.run_streamed(image.push_argv(engine, tag)))
            console.print(f"[green]pushed[/green] {tag}")
    else:
        console.print(f"build it with: docker build -t {tag} {out}")


def compose_command(
    repo: OptionalRepo = None,
    image_ref: Image = "",
    replicas: Replicas = DeploySpec.replicas,
    name: Name = DeploySpec.name,
    model_uri: ModelUri = DeploySpec.model_uri,
    out: Annotated[Path, typer.Option("--output", "-o", help="Folder for docker-compose.yml and nginx.conf.")] = Path(
        "."
    ),
    port: Annotated[int, typer.Option(help="Host port nginx publishes for HTTP.")] = PUBLISHED_HTTP_PORT,
    grpc_port: Annotated[int, typer.Option(help="Host port nginx publishes for gRPC.")] = GRPC_PORT,
    nginx_image: Annotated[str, typer.Option(help="nginx image (any nginx >= 1.22).")] = NGINX_IMAGE,
    trust_code: TrustCode = DeploySpec.trust_code,
) -> None:
    """Write docker-compose.yml: REPLICAS Ferry containers behind nginx, with health checks."""
    from ferry.deploy import compose

    spec = _spec(repo, image_ref, name=name, replicas=replicas, model_uri=model_uri, trust_code=trust_code)
    front = compose.Front(image=nginx_image, http_port=port, grpc_port=grpc_port)
    for path in _run(lambda: compose.write_compose(spec, out, front)):
        console.print(f"[green]wrote[/green] {path}")
    compose_file = out / "docker-compose.yml"
    console.print(f"run it with: docker compose -p {name} -f {compose_file} up -d   (then http://127.0.0.1:{port})")


def k8s_command(
    ctx: typer.Context,
    repo: OptionalRepo = None,
    image_ref: Image = "",
    name: Name = DeploySpec.name,
    namespace: Namespace = DeploySpec.namespace,
    replicas: Replicas = CLUSTER_REPLICAS,
    max_replicas: Annotated[
        int, typer.Option(help="Autoscaler maximum (default 3 x replicas).")
    ] = DeploySpec.max_replicas,
    service_type: ServiceType = DeploySpec.service_type,
    model_uri: ModelUri = DeploySpec.model_uri,
    auth_secret: Annotated[
        str, typer.Option(help="Secret whose 'tokens' key becomes FERRY_AUTH_TOKENS.")
    ] = DeploySpec.auth_secret,
    fetch_secret: Annotated[
        str, typer.Option(help="Secret with credentials for the model fetch (env).")
    ] = DeploySpec.fetch_secret,
    cpu: Annotated[str, typer.Option(help="CPU request,limit.")] = f"{Resources.cpu_request},{Resources.cpu_limit}",
    memory: Annotated[
        str, typer.Option(help="Memory request,limit.")
    ] = f"{Resources.memory_request},{Resources.memory_limit}",
    in_flight_target: Annotated[
        int, typer.Option(help="Also autoscale on in-flight requests per pod (0: off).")
    ] = DeploySpec.in_flight_target,
    kserve: Annotated[bool, typer.Option(help="Also write a KServe InferenceService.")] = False,
    knative: Annotated[bool, typer.Option(help="Also write a Knative Service (scales on concurrency).")] = False,
    scale_to_zero: Annotated[bool, typer.Option(help="--knative: no pod while idle (min-scale 0).")] = False,
    keda: Annotated[
        bool, typer.Option(help="A KEDA ScaledObject on Ferry's queue and request rate instead of the HPA.")
    ] = False,
    service_monitor: Annotated[
        bool, typer.Option(help="Also write a Prometheus Operator ServiceMonitor and PrometheusRule (alerts).")
    ] = False,
    concurrency_target: Annotated[
        int, typer.Option(help="KEDA/Knative: requests in one replica at once before scaling out.")
    ] = Scaling.concurrency,
    sla_p99_ms: Annotated[
        float, typer.Option(help="The p99 latency (ms) above which an alert fires.")
    ] = Scaling.p99_seconds * 1000,
    prometheus_url: Annotated[
        str, typer.Option(help="--keda: the Prometheus that KEDA queries.")
    ] = Scaling.prometheus_url,
    values: Annotated[
        Path | None,
        typer.Option(help="`ferry plan --values` output: replicas, resources, autoscaling (options given win)."),
    ] = None,
    network_policy: Annotated[
        bool, typer.Option(help="A NetworkPolicy: the probe port only from the kubelet and Prometheus.")
    ] = True,
    routes: Annotated[
        Path | None, typer.Option(help="Routes file: also write an Istio VirtualService (+ DestinationRules).")
    ] = None,
    shard: Annotated[
        bool,
        typer.Option(help="Spread the models over the replicas: Istio consistent hash on x-ferry-model (needs Istio)."),
    ] = False,
    max_memory: Annotated[
        str, typer.Option(help="--shard: each replica's budget for loaded models, like 1GiB (below --memory's limit).")
    ] = "",
    out: Annotated[Path, typer.Option("--output", "-o", help="Folder for the manifests.")] = Path("k8s"),
    trust_code: TrustCode = DeploySpec.trust_code,
) -> None:
    """Write Kubernetes manifests: Namespace, ConfigMap, Deployment, Service, HPA, PDB, kustomization (and add-ons)."""
    from ferry.deploy import k8s
    from ferry.deploy.addons import Addons, render_with_addons
    from ferry.deploy.values import PlanValues, load_values

    addons = Addons(kserve, knative, keda, service_monitor, network_policy)
    _run(lambda: _check_addons(addons, scale_to_zero=scale_to_zero, in_flight_target=in_flight_target))
    _run(lambda: _check_shard(addons, shard=shard, max_memory=max_memory))
    planned = _run(lambda: load_values(values)) if values is not None else PlanValues()

    def pick(option: str, given: T, from_plan: T | None) -> T:
        """The plan's value, unless the option was given on the command line."""
        source = ctx.get_parameter_source(option)  # typer vendors click: compare the enum by name
        explicit = source is not None and source.name != "DEFAULT"
        return given if from_plan is None or explicit else from_plan

    p99 = pick("sla_p99_ms", sla_p99_ms / 1000, planned.p99_seconds)
    scaling = _run(
        lambda: Scaling(
            concurrency=pick("concurrency_target", concurrency_target, planned.concurrency),
            rate=planned.rate or 0.0,
            p99_seconds=p99,
            scale_to_zero=scale_to_zero,
            prometheus_url=prometheus_url,
        )
    )
    spec = _spec(
        repo,
        image_ref,
        name=name,
        namespace=namespace,
        replicas=pick("replicas", replicas, planned.replicas),
        max_replicas=pick("max_replicas", max_replicas, planned.max_replicas),
        service_type=service_type,
        model_uri=model_uri,
        auth_secret=auth_secret,
        fetch_secret=fetch_secret,
        resources=_resources(pick("cpu", cpu, planned.cpu), pick("memory", memory, planned.memory)),
        in_flight_target=in_flight_target,
        cpu_target_percent=planned.cpu_target_percent or DeploySpec.cpu_target_percent,
        scaling=scaling,
        trust_code=trust_code,
    )
    objects = render_with_addons(spec, addons)
    if shard:
        from ferry.bundle import scan_repository
        from ferry.deploy.shard import Sharding, apply_sharding

        sharding = Sharding(max_memory, tuple(sorted(scan_repository(repo))) if repo is not None else ())
        objects = _run(lambda: apply_sharding(objects, spec, sharding))
        if routes is not None:
            from ferry.deploy.istio import render_destination_rules
            from ferry.deploy.shard import check_routes
            from ferry.routing.spec import load_routes

            _run(lambda: check_routes(spec, render_destination_rules(load_routes(routes), namespace)))
    for path in _run(lambda: k8s.write_manifests(spec, out, objects=objects)):
        console.print(f"[green]wrote[/green] {path}")
    console.print(f"apply them with: kubectl apply --server-side -k {out}")
    if routes is not None:
        from ferry.deploy import istio
        from ferry.routing.spec import load_routes

        istio_path = _run(lambda: istio.write_istio(load_routes(routes), namespace, out))
        console.print(f"[green]wrote[/green] {istio_path}  (Istio routing; apply with: kubectl apply -f {istio_path})")


def fetch_command(
    uri: Annotated[str, typer.Argument(help="Local path, http(s):// URL, s3:// or gs:// URI.")],
    dest: Annotated[Path, typer.Argument(help="Model repository to fetch into.", envvar=Settings.env_name("repo"))],
) -> None:
    """Fetch bundles into DEST and verify every artifact's SHA-256 (the init container's job)."""
    from ferry.deploy import fetch

    for path in _run(lambda: fetch.fetch_bundles(uri, dest)):
        console.print(f"[green]fetched[/green] {path}")


def index_command(repo: Repo) -> None:
    """Write REPO/ferry-index.json so any static HTTP server can serve REPO to `ferry fetch`."""
    from ferry.deploy import fetch

    console.print(f"[green]wrote[/green] {_run(lambda: fetch.write_index(repo))}")


def deploy_command(
    repo: OptionalRepo = None,
    image_ref: Image = "",
    name: Name = DeploySpec.name,
    namespace: Namespace = DeploySpec.namespace,
    replicas: Replicas = CLUSTER_REPLICAS,
    service_type: ServiceType = DeploySpec.service_type,
    model_uri: ModelUri = DeploySpec.model_uri,
    dry_run: Annotated[bool, typer.Option(help="Print the objects instead of applying them.")] = False,
    timeout: Annotated[int, typer.Option(help="Seconds to wait for the rollout.")] = 300,
    context: Context = None,
    trust_code: TrustCode = DeploySpec.trust_code,
) -> None:
    """Apply the objects with `kubectl apply --server-side`, wait for the rollout, print the address."""
    from ferry.deploy import k8s, kubectl

    spec = _spec(
        repo,
        image_ref,
        name=name,
        namespace=namespace,
        replicas=replicas,
        service_type=service_type,
        model_uri=model_uri,
        trust_code=trust_code,
    )
    objects = list(k8s.render_manifests(spec).values())
    if dry_run:
        typer.echo(k8s.to_yaml(objects), nl=False)
        return
    for line in _run(lambda: kubectl.apply(objects, context=context)).splitlines():
        console.print(line)
    with console.status(f"waiting for deployment/{spec.name} in {spec.namespace} to roll out ({timeout}s)"):
        _run(lambda: kubectl.wait_rollout(spec, timeout, context=context))
    _print_status(_run(lambda: kubectl.status(spec, context=context)))


def undeploy_command(
    name: Name = DeploySpec.name,
    namespace: Namespace = DeploySpec.namespace,
    delete_namespace: Annotated[bool, typer.Option(help="Also delete the namespace and all in it.")] = False,
    context: Context = None,
) -> None:
    """Delete what `ferry deploy` applied (the namespace only with --delete-namespace)."""
    from ferry.deploy import k8s, kubectl

    spec = _run(lambda: DeploySpec(image="ferry:undeploy", name=name, namespace=namespace))
    objects = [o for o in k8s.render_manifests(spec).values() if delete_namespace or o["kind"] != "Namespace"]
    for line in _run(lambda: kubectl.delete(objects, context=context)).splitlines():
        console.print(line)


def status_command(
    name: Name = DeploySpec.name, namespace: Namespace = DeploySpec.namespace, context: Context = None
) -> None:
    """Ready replicas and the Service's address."""
    from ferry.deploy import kubectl

    spec = _run(lambda: DeploySpec(image="ferry:status", name=name, namespace=namespace))
    _print_status(_run(lambda: kubectl.status(spec, context=context)))


def register(app: typer.Typer) -> None:
    app.command("containerize")(containerize_command)
    app.command("compose")(compose_command)
    app.command("k8s")(k8s_command)
    app.command("fetch")(fetch_command)
    app.command("index")(index_command)
    app.command("deploy")(deploy_command)
    app.command("undeploy")(undeploy_command)
    app.command("status")(status_command)


def _spec(repo: Path | None, image_ref: str, **options: object) -> DeploySpec:
    def build() -> DeploySpec:
        from ferry.deploy import dockerfile

        if not image_ref:
            raise SpecError("--image IMAGE:TAG is required")
        # Only whether there are bundles: their requirements are containerize's to check, where it installs them.
        if repo is not None and not options.get("model_uri") and not dockerfile.model_refs(repo, True):
            raise SpecError(f"{repo}: no bundles found (expected REPO/<name>/<version>/ferry.yaml)")
        return DeploySpec(image=image_ref, **options)  # type: ignore[arg-type]

    return _run(build)


def _check_addons(addons: Addons, scale_to_zero: bool, in_flight_target: int) -> None:
    """Options that would be silently ignored are refused instead."""
    if scale_to_zero and not addons.knative:
        raise SpecError("--scale-to-zero applies to the Knative Service; add --knative")
    if in_flight_target and addons.keda:
        raise SpecError("--in-flight-target is an HPA metric, and --keda replaces the HPA; use --concurrency-target")


def _check_shard(addons: Addons, shard: bool, max_memory: str) -> None:
    if max_memory and not shard:
        raise SpecError("--max-memory applies to --shard; add --shard")
    if not shard:
        return
    if not max_memory:
        raise SpecError("--shard needs --max-memory SIZE: each replica's budget for the models it loads")
    if addons.knative or addons.kserve:
        raise SpecError("--shard hashes over the Deployment's pods behind its Service; drop --knative and --kserve")


def _resources(cpu: str, memory: str) -> Resources:
    cpu_request, _, cpu_limit = cpu.partition(",")
    memory_request, _, memory_limit = memory.partition(",")
    return Resources(cpu_request, memory_request, cpu_limit or cpu_request, memory_limit or memory_request)


def _print_status(status: Status) -> None:
    colour = "green" if status.ready >= status.desired > 0 else "yellow"
    console.print(f"[{colour}]{status.ready}/{status.desired} ready[/{colour}], {status.updated} up to date")
    if status.address:
        console.print(f"address: {status.address}")
    elif status.service_type == "LoadBalancer":
        console.print("address: pending (the cloud has not assigned the LoadBalancer an address yet)")
    else:
        console.print(f"address: none ({status.service_type} Service; use kubectl port-forward)")


def _git_remote(repo: Path) -> str:
    """The model repository's git remote, for the OCI source label; empty when there is none."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip()
