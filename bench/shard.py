"""The sharding scheme of ``ferry k8s --shard``, run on one machine: N replicas behind a consistent hash.

    python bench/shard.py [--models 240] [--replicas 3] [--max-memory 6MiB] [--repo DIR]

There is no cluster or Envoy here, so nginx (Debian's ``nginx-light``) stands in for Istio: its
``hash $http_x_ferry_model consistent`` is a ketama ring on the same header, as Envoy's ring hash
is. Each replica is ``ferry serve`` with the environment ``ferry k8s --shard`` gives the Deployment
(rendered by Ferry's own functions). Models are ``m<i>`` (``bench/many_models.py`` builds them;
``m<i>`` answers ``10 + i``). Phases:

1. every model twice with the header: models READY per replica (the working set), each on one replica;
2. one replica added (nginx reloaded, as Envoy's ring changes on scale-out): every model again; how many
   moved, and any failure or wrong answer;
3. every model twice *without* the header: nginx then balances round-robin, so working sets widen.

Reports the figures as a Markdown table and JSON (``--out``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from many_models import BODY, build_repo, free_port, percentile

from ferry.deploy import k8s
from ferry.deploy.shard import Sharding, apply_sharding
from ferry.deploy.spec import DeploySpec, Resources
from ferry.routing.router import MODEL_HEADER


def shard_env(max_memory: str, models: tuple[str, ...]) -> dict[str, str]:
    """The Deployment's server environment under ``--shard``, as ``ferry k8s`` renders it."""
    spec = DeploySpec(image="ferry:bench", resources=Resources(memory_limit="1Gi"))
    objects = apply_sharding(k8s.render_manifests(spec), spec, Sharding(max_memory, models))
    server = objects["20-deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in server["env"]}


class Replica:
    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "ferry", "serve", str(repo), "--port", str(self.port), "--grpc-port", "0"]
        argv += ["--probe-port", "0", "--log-level", "warning", "--no-access-log"]
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica on {self.port} did not become ready")
            time.sleep(0.02)

    def _ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/ready")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def loaded(self) -> set[str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/models")
        listing = json.loads(conn.getresponse().read())["models"]
        return {m["name"] for m in listing for v in m["versions"] if v["state"] == "READY"}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


class Nginx:
    """nginx as the consistent-hash proxy: ketama on the model header, like Istio's ring hash on it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        (folder / "tmp").mkdir(parents=True, exist_ok=True)

    def configure(self, replicas: list[Replica], hashed: bool = True) -> None:
        temp = self.folder / "tmp"
        servers = "".join(f"    server 127.0.0.1:{r.port} max_fails=0;\n" for r in replicas)
        balance = f"    hash $http_{MODEL_HEADER.replace('-', '_')} consistent;\n" if hashed else ""
        (self.folder / "nginx.conf").write_text(
            f"worker_processes 1;\npid {self.folder}/nginx.pid;\nerror_log {self.folder}/error.log warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n  access_log off;\n"
            + "".join(f"  {k}_temp_path {temp}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  upstream ferry {{\n{balance}{servers}    keepalive 8;\n  }}\n"
            f"  server {{\n    listen 127.0.0.1:{self.port};\n    location / {{\n      proxy_pass http://ferry;\n"
            '      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n    }\n  }\n}\n'
        )

    def start(self) -> None:
        self._nginx()
        time.sleep(0.5)

    def reload(self) -> None:
        self._nginx("-s", "reload")
        time.sleep(1.0)  # the old worker finishes; new requests meet the new ring

    def stop(self) -> None:
        self._nginx("-s", "quit")

    def _nginx(self, *args: str) -> None:
        conf = str(self.folder / "nginx.conf")
        subprocess.run(["nginx", "-c", conf, "-p", str(self.folder), *args], check=True, capture_output=True)


def one_pass(port: int, models: int, header: bool) -> tuple[list[float], int]:
    """Latency in ms of one call to every model, and the failures (non-200 or a wrong answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies, failures = [], 0
    for i in range(models):
        headers = {"Content-Type": "application/json", **({MODEL_HEADER: f"m{i}"} if header else {})}
        started = time.perf_counter()
        conn.request("POST", f"/models/m{i}/predict", BODY, headers)
        answer = conn.getresponse()
        body = answer.read()
        latencies.append((time.perf_counter() - started) * 1000.0)
        if answer.status != 200 or abs(json.loads(body)["prediction"] - (10.0 + i)) > 1e-6:
            failures += 1
    conn.close()
    return latencies, failures


def summary(latencies: list[float]) -> str:
    return f"{statistics.median(latencies):.1f} / {percentile(latencies, 99):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=240)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--max-memory", default="6MiB")
    parser.add_argument("--repo", type=Path, default=Path("/tmp/ferry-bench-many"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        sys.exit("nginx is not installed (apt-get install nginx-light)")
    build_repo(args.repo, args.models)
    work = Path(tempfile.mkdtemp(prefix="ferry-shard-"))
    repo = work / "repo"  # exactly the first --models models of the shared repository
    repo.mkdir()
    for i in range(args.models):
        (repo / f"m{i}").symlink_to(args.repo / f"m{i}")
    env = shard_env(args.max_memory, tuple(f"m{i}" for i in range(args.models)))
    print(f"replica environment (from ferry k8s --shard): {env}")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    replicas = [Replica(repo, env) for _ in range(args.replicas)]
    nginx = Nginx(work / "nginx")
    rows, result = [], {"models": args.models, "max_memory": args.max_memory, "env": env}
    try:
        nginx.configure(replicas)
        nginx.start()
        cold, failed_cold = one_pass(nginx.port, args.models, header=True)
        hits, failed_hits = one_pass(nginx.port, args.models, header=True)
        held = [r.loaded() for r in replicas]
        on_one = sum(sum(f"m{i}" in h for h in held) == 1 for i in range(args.models))
        rows.append(
            (
                f"{args.replicas} replicas, header",
                [len(h) for h in held],
                summary(cold),
                summary(hits),
                failed_cold + failed_hits,
                f"{on_one} of {args.models} models on exactly one replica",
            )
        )

        replicas.append(Replica(repo, env))
        nginx.configure(replicas)
        nginx.reload()
        after_cold, failed_after = one_pass(nginx.port, args.models, header=True)
        after_hits, failed_after_hits = one_pass(nginx.port, args.models, header=True)
        moved = replicas[-1].loaded()
        # the others' models still meet the replica that holds them: the old replicas load nothing more
        reloaded = sum(len(r.loaded() - h) for r, h in zip(replicas, held, strict=False))
        rows.append(
            (
                f"{len(replicas)} replicas (one added), header",
                [len(r.loaded()) for r in replicas],
                summary(after_cold),
                summary(after_hits),
                failed_after + failed_after_hits,
                f"{len(moved)} models ({len(moved) / args.models:.0%}) moved to the new replica; "
                f"the old replicas loaded {reloaded} more",
            )
        )

        nginx.configure(replicas, hashed=False)
        nginx.reload()
        plain, failed_plain = one_pass(nginx.port, args.models, header=False)
        plain_hits, failed_plain_hits = one_pass(nginx.port, args.models, header=False)
        rows.append(
            (
                f"{len(replicas)} replicas, no header",
                [len(r.loaded()) for r in replicas],
                summary(plain),
                summary(plain_hits),
                failed_plain + failed_plain_hits,
                "round-robin, as Envoy picks at random without the header: every replica loads what it is sent",
            )
        )
    finally:
        nginx.stop()
        for replica in replicas:
            replica.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| phase | models READY per replica | first pass p50 / p99 | second pass p50 / p99 | failures | note |")
    print("|---|---|---|---|---:|---|")
    for phase, counts, first, second, failures, note in rows:
        print(f"| {phase} | {' / '.join(map(str, counts))} | {first} | {second} | {failures} | {note} |")
    result["phases"] = [
        dict(zip(("phase", "ready", "first", "second", "failures", "note"), r, strict=True)) for r in rows
    ]
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
