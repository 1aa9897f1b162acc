"""docker-compose for a local cluster: N Ferry replicas behind nginx, both health-checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ferry.deploy.dockerfile import healthcheck_command
from ferry.deploy.spec import (
    GID,
    GRPC_PORT,
    HTTP_PORT,
    MODELS_DIR,
    NGINX_IMAGE,
    PUBLISHED_HTTP_PORT,
    READINESS_PATH,
    TMP_DIR,
    UID,
    DeploySpec,
)
from ferry.settings import Settings


@dataclass(frozen=True)
class Front:
    """nginx in front of the replicas: its image, and the host ports it publishes for HTTP and gRPC."""

    image: str = NGINX_IMAGE
    http_port: int = PUBLISHED_HTTP_PORT
    grpc_port: int = GRPC_PORT


def render_nginx_conf() -> str:
    """Round-robin over every replica: compose's DNS answers ``ferry`` with all of their addresses."""
    return f"""\
# Written by `ferry compose`.
worker_processes auto;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path /tmp/client_body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    client_max_body_size 8m;
    access_log /dev/stdout;

    upstream ferry_http {{ server ferry:{HTTP_PORT} max_fails=1 fail_timeout=5s; keepalive 32; }}
    upstream ferry_grpc {{ server ferry:{GRPC_PORT} max_fails=1 fail_timeout=5s; }}

    server {{
        listen 8080;
        location = /nginx-health {{ access_log off; return 200 "ok\\n"; }}
        location / {{
            proxy_pass http://ferry_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # A replica that dies mid-request: resend to another. Predictions have no side effects, so POSTs too.
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            # A killed replica's address answers nothing (no refusal): give up on it fast, not after 60 s.
            proxy_connect_timeout 1s;
        }}
    }}
    server {{
        listen {GRPC_PORT} http2;  # not `http2 on;`: that needs nginx 1.25.1, Debian bookworm has 1.22
        location / {{ grpc_pass grpc://ferry_grpc; grpc_connect_timeout 1s; }}
    }}
}}
"""


def render_compose(spec: DeploySpec, front: Front = Front()) -> dict[str, Any]:
    """Same image, UID, read-only root, limits and FERRY_* environment as the Kubernetes Deployment."""
    environment = spec.server_env()
    ferry: dict[str, Any] = {
        "image": spec.image,
        "user": f"{UID}:{GID}",
        "read_only": True,
        "tmpfs": [TMP_DIR],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "environment": environment,
        "expose": [str(HTTP_PORT), str(GRPC_PORT)],
        "stop_grace_period": f"{spec.drain_timeout + 5}s",
        "healthcheck": {
            # Readiness, not liveness: nginx (depends_on: service_healthy) starts once the models are loaded.
            "test": ["CMD", *healthcheck_command(READINESS_PATH)],
            "interval": "10s",
            "timeout": "3s",
            "retries": 3,
            "start_period": "30s",
        },
        "deploy": {
            "replicas": spec.replicas,
            "resources": {"limits": {"cpus": spec.resources.cpu_limit, "memory": _compose_memory(spec)}},
        },
        "restart": "unless-stopped",
    }
    if spec.model_uri:
        environment[Settings.env_name("model_uri")] = spec.model_uri
        ferry["tmpfs"] = [TMP_DIR, f"{MODELS_DIR}:uid={UID},gid={GID}"]
    nginx: dict[str, Any] = {
        "image": front.image,
        "ports": [f"{front.http_port}:8080", f"{front.grpc_port}:{GRPC_PORT}"],
        "volumes": ["./nginx.conf:/etc/nginx/nginx.conf:ro"],
        "read_only": True,
        "tmpfs": [TMP_DIR],
        "depends_on": {"ferry": {"condition": "service_healthy"}},
        "healthcheck": {
            "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/nginx-health"],
            "interval": "10s",
            "timeout": "3s",
            "retries": 3,
        },
        "restart": "unless-stopped",
    }
    # No top-level `name:`: Debian's docker-compose 1.29 refuses it; the project name goes on the command line (-p).
    return {"services": {"ferry": ferry, "nginx": nginx}}


def write_compose(spec: DeploySpec, out: Path, front: Front = Front()) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    compose = out / "docker-compose.yml"
    compose.write_text(yaml.safe_dump(render_compose(spec, front), sort_keys=False), encoding="utf-8")
    conf = out / "nginx.conf"
    conf.write_text(render_nginx_conf(), encoding="utf-8")
    return [compose, conf]


def _compose_memory(spec: DeploySpec) -> str:
    """Kubernetes ``1Gi`` -> compose ``1g``: the same limit in each tool's spelling."""
    value = spec.resources.memory_limit
    for suffix, short in (("Gi", "g"), ("Mi", "m"), ("Ki", "k")):
        if value.endswith(suffix):
            return value[: -len(suffix)] + short
    return value
