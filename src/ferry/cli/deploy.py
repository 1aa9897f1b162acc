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
from ferry.cli.options import settings_command
from ferry.deploy.options import (
    ApplyOptions,
    ComposeOptions,
    ContainerizeOptions,
    K8sOptions,
    StatusOptions,
    UndeployOptions,
)
from ferry.deploy.spec import DeploySpec, Resources, Scaling
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


def containerize_command(
    repo: Repo,
    tag: Annotated[str, typer.Option("--tag", "-t", help="Image reference, IMAGE:TAG.")],
    settings: ContainerizeOptions,
) -> None:
    """Write a Docker build context for REPO: Dockerfile, .dockerignore, pinned requirements, models."""
    from ferry.deploy import dockerfile, image

    o, out = settings, settings.out
    spec = _run(
        lambda: dockerfile.image_spec_for(
            repo,
            tag,
            include_models=o.models,
            base_image=o.base_image,
            source=o.source or _git_remote(repo),
            extras=tuple(o.extra or ()),
            trust_code=o.trust_code,
            trust_pickle=o.trust_pickle,
            original_models=o.original_models,
            allow_requirement_options=o.allow_requirement_options,
        )
    )
    for path in _run(lambda: dockerfile.write_build_context(repo, out, spec)):
        console.print(f"[green]wrote[/green] {path}")
    for model, flag in spec.untrusted() if spec.include_models else ():
        variable = "FERRY_TRUST_CODE" if flag == "--trust-code" else "FERRY_TRUST_PICKLE"
        console.print(
            f"[yellow]warning[/yellow] {model.name}:{model.version} loads only with {flag}: this image's server "
            f"will answer it as FAILED unless started with {variable}=1 (pass {flag} here, or to ferry k8s, "
            "compose or deploy, only if you trust where the model came from)",
            soft_wrap=True,
        )
    if o.build or o.push:
        engine = _run(image.find_engine)
        _run(lambda: image.run_streamed(image.build_argv(engine, out, tag)))
        console.print(f"[green]built[/green] {tag}")
        if o.push:
            _run(lambda: image.run_streamed(image.push_argv(engine, tag)))
            console.print(f"[green]pushed[/green] {tag}")
    else:
        console.print(f"build it with: docker build -t {tag} {out}")


def compose_command(repo: OptionalRepo = None, *, settings: ComposeOptions) -> None:
    """Write docker-compose.yml: REPLICAS Ferry containers behind nginx, with health checks."""
    from ferry.deploy import compose

    o, out, name, port = settings, settings.out, settings.name, settings.port
    spec = _spec(
        repo,
        o.image_ref,
        name=name,
        replicas=o.replicas,
        model_uri=o.model_uri,
        trust_code=o.trust_code,
        trust_pickle=o.trust_pickle,
    )
    front = compose.Front(image=o.nginx_image, http_port=port, grpc_port=o.grpc_port)
    for path in _run(lambda: compose.write_compose(spec, out, front)):
        console.print(f"[green]wrote[/green] {path}")
    compose_file = out / "docker-compose.yml"
    console.print(f"run it with: docker compose -p {name} -f {compose_file} up -d   (then http://127.0.0.1:{port})")


def k8s_command(ctx: typer.Context, repo: OptionalRepo = None, *, settings: K8sOptions) -> None:
    """Write Kubernetes manifests: Namespace, ConfigMap, Deployment, Service, HPA, PDB, kustomization (and add-ons)."""
    from ferry.deploy import k8s
    from ferry.deploy.addons import Addons, render_with_addons
    from ferry.deploy.values import PlanValues, load_values

    o = settings
    kserve, knative, keda, monitor, network_policy = o.kserve, o.knative, o.keda, o.service_monitor, o.network_policy
    scale_to_zero, in_flight_target, shard, max_memory = o.scale_to_zero, o.in_flight_target, o.shard, o.max_memory
    values, routes, namespace, out = o.values, o.routes, o.namespace, o.out
    addons = Addons(kserve, knative, keda, monitor, network_policy)
    _run(lambda: _check_addons(addons, scale_to_zero=scale_to_zero, in_flight_target=in_flight_target))
    _run(lambda: _check_shard(addons, shard=shard, max_memory=max_memory))
    planned = _run(lambda: load_values(values)) if values is not None else PlanValues()

    def pick(option: str, given: T, from_plan: T | None) -> T:
        """The plan's value, unless the option was given on the command line."""
        source = ctx.get_parameter_source(option)  # typer vendors click: compare the enum by name
        explicit = source is not None and source.name != "DEFAULT"
        return given if from_plan is None or explicit else from_plan

    p99 = pick("sla_p99_ms", o.sla_p99_ms / 1000, planned.p99_seconds)
    scaling = _run(
        lambda: Scaling(
            concurrency=pick("concurrency_target", o.concurrency_target, planned.concurrency),
            rate=planned.rate or 0.0,
            p99_seconds=p99,
            scale_to_zero=scale_to_zero,
            prometheus_url=o.prometheus_url,
        )
    )
    spec = _spec(
        repo,
        o.image_ref,
        name=o.name,
        namespace=namespace,
        replicas=pick("replicas", o.replicas, planned.replicas),
        max_replicas=pick("max_replicas", o.max_replicas, planned.max_replicas),
        service_type=o.service_type,
        model_uri=o.model_uri,
        auth_secret=o.auth_secret,
        fetch_secret=o.fetch_secret,
        resources=_resources(pick("cpu", o.cpu, planned.cpu), pick("memory", o.memory, planned.memory)),
        in_flight_target=in_flight_target,
        cpu_target_percent=planned.cpu_target_percent or DeploySpec.cpu_target_percent,
        scaling=scaling,
        trust_code=o.trust_code,
        trust_pickle=o.trust_pickle,
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
    for standalone, what in (("60-inferenceservice.yaml", "KServe"), ("65-knative-service.yaml", "Knative")):
        if (out / standalone).is_file():  # an alternative to the Deployment: left out of the kustomization
            console.print(
                f"or, to serve through {what} instead of the Deployment: kubectl apply -f {out / '00-namespace.yaml'} "
                f"-f {out / '10-configmap.yaml'} -f {out / standalone}",
                soft_wrap=True,
            )
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


def deploy_command(repo: OptionalRepo = None, *, settings: ApplyOptions) -> None:
    """Apply the objects with `kubectl apply --server-side`, wait for the rollout, print the address."""
    from ferry.deploy import k8s, kubectl

    o, context, timeout = settings, settings.context, settings.timeout
    spec = _spec(
        repo,
        o.image_ref,
        name=o.name,
        namespace=o.namespace,
        replicas=o.replicas,
        service_type=o.service_type,
        model_uri=o.model_uri,
        trust_code=o.trust_code,
        trust_pickle=o.trust_pickle,
    )
    objects = list(k8s.render_manifests(spec).values())
    if o.dry_run:
        typer.echo(k8s.to_yaml(objects), nl=False)
        return
    for line in _run(lambda: kubectl.apply(objects, context=context)).splitlines():
        console.print(line)
    with console.status(f"waiting for deployment/{spec.name} in {spec.namespace} to roll out ({timeout}s)"):
        _run(lambda: kubectl.wait_rollout(spec, timeout, context=context))
    _print_status(_run(lambda: kubectl.status(spec, context=context)))


def undeploy_command(settings: UndeployOptions) -> None:
    """Delete what `ferry deploy` applied (the namespace only with --delete-namespace)."""
    from ferry.deploy import k8s, kubectl

    o = settings
    spec = _run(lambda: DeploySpec(image="ferry:undeploy", name=o.name, namespace=o.namespace))
    objects = [x for x in k8s.render_manifests(spec).values() if o.delete_namespace or x["kind"] != "Namespace"]
    for line in _run(lambda: kubectl.delete(objects, context=o.context)).splitlines():
        console.print(line)


def status_command(settings: StatusOptions) -> None:
    """Ready replicas and the Service's address."""
    from ferry.deploy import kubectl

    o = settings
    spec = _run(lambda: DeploySpec(image="ferry:status", name=o.name, namespace=o.namespace))
    _print_status(_run(lambda: kubectl.status(spec, context=o.context)))


def register(app: typer.Typer) -> None:
    app.command("containerize")(settings_command(containerize_command, ContainerizeOptions))
    app.command("compose")(settings_command(compose_command, ComposeOptions))
    app.command("k8s")(settings_command(k8s_command, K8sOptions))
    app.command("fetch")(fetch_command)
    app.command("index")(index_command)
    app.command("deploy")(settings_command(deploy_command, ApplyOptions))
    app.command("undeploy")(settings_command(undeploy_command, UndeployOptions))
    app.command("status")(settings_command(status_command, StatusOptions))


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
