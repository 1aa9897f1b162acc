"""The image: render a Dockerfile, .dockerignore and pinned requirements as text, then write a build context."""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ferry.bundle import MANIFEST_FILE, read_manifest, scan_repository
from ferry.bundle.artifacts import contained, links_leading_out, sniff
from ferry.bundle.manifest import Manifest
from ferry.bundle.requirements import ALLOW_FLAG, bundle_requirements
from ferry.bundle.trust import SERVER_FLAG, Trust, check_trusted, model_imports
from ferry.deploy.pins import (
    RUNTIME_APT_PACKAGES,
    RUNTIME_EXTRAS,
    normalize,
    pin_if_installed,
    pinned_requirements,
    requirement_name,
)
from ferry.deploy.spec import (
    DEFAULT_BASE_IMAGE,
    GID,
    GRPC_PORT,
    HTTP_PORT,
    LIVENESS_PATH,
    MODELS_DIR,
    PROBE_PORT,
    UID,
    VENV_DIR,
    container_env,
    image_tag,
)
from ferry.errors import SpecError, UntrustedPickle
from ferry.settings import Settings

SOURCE_DIR = "ferry-src"
MODELS_CONTEXT_DIR = "models"


@dataclass(frozen=True)
class ModelRef:
    """A bundle as the image labels it: the digest is the SHA-256 of its manifest, which lists every artifact hash."""

    name: str
    version: str
    runtime: str
    digest: str
    images: bool = False  # image input: decoding needs Pillow (the `images` extra)
    requirements: tuple[str, ...] = ()  # the bundle's own pip requirements (a Python class's, --requirements)
    compiled: bool = False  # the bundle holds a verified compiled form, which serves with numpy alone
    # Distributions serving the original artifact imports beyond the runtime's extra: what its file names
    # (a pipeline's third-party step), and pandas for a model called with a DataFrame (``input.frame``).
    packages: tuple[str, ...] = ()
    # The server option its original files need: --trust-code (a Python class), --trust-pickle (a pickle, or a
    # skops file naming a type only the operator may allow), or "" for none.
    needs: str = ""


@dataclass(frozen=True)
class ImageSpec:
    image: str
    models: tuple[ModelRef, ...]
    include_models: bool = True
    base_image: str = DEFAULT_BASE_IMAGE
    ferry_version: str = "0.0.0"
    ferry_from_source: bool = True
    source: str = ""
    more_extras: tuple[str, ...] = ()  # `--extra`: optional features the runtimes do not imply (tracing, fetch)
    trust_code: bool = False  # the operator's --trust-code: the image imports the bundles' Python classes
    trust_pickle: bool = False  # the operator's --trust-pickle: the image unpickles the bundles' pickle files
    original_models: bool = False  # --original-models: serve the original artifacts, so install their frameworks
    allow_requirement_options: bool = False  # the operator's --allow-requirement-options: pip options, URLs

    def serving_runtime(self, model: ModelRef) -> str:
        """The runtime the image's server loads the bundle with: its compiled form unless the originals are asked."""
        return "compiled" if model.compiled and not self.original_models else model.runtime

    @property
    def extras(self) -> set[str]:
        runtimes = {self.serving_runtime(m) for m in self.models}
        extras = {e for r in runtimes if (e := RUNTIME_EXTRAS.get(r))} | set(self.more_extras)
        return extras | ({"images"} if any(m.images for m in self.models) else set())

    def untrusted(self) -> list[tuple[ModelRef, str]]:
        """The bundles this image's server will not load (they will be FAILED) and the option each needs."""
        granted = {"--trust-code": self.trust_code, "--trust-pickle": self.trust_pickle or self.trust_code}
        return [
            (m, m.needs)
            for m in self.models
            if m.needs and not granted[m.needs] and self.serving_runtime(m) != "compiled"
        ]

    @property
    def packages(self) -> tuple[str, ...]:
        """The distributions, beyond Ferry's extras, that the bundles served from their originals import."""
        return tuple(sorted({p for m in self.models if self.serving_runtime(m) != "compiled" for p in m.packages}))

    @property
    def apt_packages(self) -> tuple[str, ...]:
        packages = {p for m in self.models for p in RUNTIME_APT_PACKAGES.get(self.serving_runtime(m), ())}
        # A class bundle that pip-installs a framework needs that framework's system libraries too.
        wanted = {requirement_name(r) for m in self.models for r in m.requirements}
        packages |= {p for runtime in wanted & set(RUNTIME_APT_PACKAGES) for p in RUNTIME_APT_PACKAGES[runtime]}
        return tuple(sorted(packages))


def model_refs(repo: Path, allow_requirement_options: bool = False) -> tuple[ModelRef, ...]:
    """Every bundle in ``repo``; the manifest is read (and so validated) but artifacts are not loaded.

    A bundle's requirements are package specifiers in a listed file inside it (``bundle.requirements``); pip
    options, URLs and paths only with the operator's ``allow_requirement_options``."""
    refs = []
    for bundles in scan_repository(repo).values():
        for ref in bundles:
            manifest = read_manifest(ref.path)
            digest = hashlib.sha256((ref.path / MANIFEST_FILE).read_bytes()).hexdigest()
            images = manifest.input.kind == "image"
            requirements = bundle_requirements(ref.path, manifest, allow_requirement_options)
            compiled = bool(manifest.options.get("compiled"))
            packages = model_packages(ref.path, manifest)
            needs = trust_needed(ref.path, manifest)
            refs.append(
                ModelRef(
                    ref.name, ref.version, manifest.runtime, digest, images, requirements, compiled, packages, needs
                )
            )
    return tuple(refs)


def trust_needed(bundle_dir: Path, manifest: Manifest) -> str:
    """The server option that loading the bundle's original files needs, by the one loading policy
    (``ferry.bundle.trust``): ``--trust-code`` for a Python class, ``--trust-pickle`` for a scikit-learn file
    that is a pickle or names a type only the operator may allow; "" when none."""
    if manifest.runtime == "python":
        return "--trust-code"
    if manifest.runtime != "sklearn":
        return ""
    steps = manifest.options.get("steps") or [manifest.options.get("artifact", "model.skops")]
    for step in steps:
        if str(step) not in manifest.artifacts:
            continue  # the runtime refuses it, naming it; nothing here opens a file the manifest does not list
        try:
            check_trusted(contained(bundle_dir, str(step)), Trust(False, SERVER_FLAG), str(step))
        except UntrustedPickle:
            return SERVER_FLAG
    return ""


def model_packages(bundle_dir: Path, manifest: Manifest) -> tuple[str, ...]:
    """The installed distributions whose modules loading the bundle's model files imports (read from the files,
    never run), and pandas for a model called with a DataFrame; Ferry itself and the standard library left out.

    A skops file names every type it holds; a pickle is read only up to its first numpy array's raw bytes (joblib
    writes them inline), so a step pickled after one is not seen: ``ferry build --requirements`` names it, and
    the image's ``ferry verify`` fails its build on anything still missing. A name no installed distribution
    provides is left to that check."""
    names = {"pandas"} if manifest.input.frame else set()
    for artifact in manifest.artifacts:
        path = contained(bundle_dir, artifact)  # inside the bundle, or an IntegrityError naming it
        if sniff(path) in ("skops", "pickle"):
            names |= {dotted.split(".")[0] for dotted in model_imports(path)}
    installed = metadata.packages_distributions()
    packages = set()
    for module in sorted(names - {"ferry"}):
        if module in installed:
            packages.add(normalize(installed[module][0]))
    return tuple(sorted(packages))


def healthcheck_command(path: str = LIVENESS_PATH) -> list[str]:
    """Python's own urllib, so the final stage needs no curl.

    It asks the probe listener (FERRY_PROBE_PORT, as serve reads it), which answers apart from the request
    load, so a busy server is not marked unhealthy; with the probe port off (0) it asks the HTTP port.
    """
    probe_variable, port_variable = Settings.env_name("probe_port"), Settings.env_name("port")
    probe = (
        "import os, urllib.request; "
        f"port = os.environ.get('{probe_variable}', '{PROBE_PORT}'); "
        f"port = os.environ.get('{port_variable}', '{HTTP_PORT}') if port == '0' else port; "
        f"urllib.request.urlopen('http://127.0.0.1:' + port + '{path}', timeout=2)"
    )
    return ["python", "-c", probe]


def image_labels(spec: ImageSpec) -> dict[str, str]:
    labels = {
        "org.opencontainers.image.title": "ferry prediction service",
        "org.opencontainers.image.version": image_tag(spec.image),
        "org.opencontainers.image.source": spec.source or "unknown",
        "io.ferry.version": spec.ferry_version,
        "io.ferry.models": ",".join(f"{m.name}@{m.version}" for m in spec.models),
    }
    if spec.include_models:
        for m in spec.models:
            labels[f"io.ferry.model.{_label_key(m.name)}.{_label_key(m.version)}"] = f"sha256:{m.digest}"
    else:
        labels["io.ferry.models"] = "fetched at start-up (FERRY_MODEL_URI)"
    return labels


def base_image_args(base_image: str) -> str:
    """The ``ARG`` lines that name the base image. An official ``python:X.Y[-variant]`` image takes its
    interpreter from ``PYTHON_VERSION``, so ``docker build --build-arg PYTHON_VERSION=3.13`` serves on Python 3.13
    (``BASE_IMAGE`` still replaces the whole image); any other base image is used as given."""
    match = re.fullmatch(r"python:(3\.\d+(?:\.\d+)?)(-[\w.-]+)?", base_image)
    if match is None:
        return f"ARG BASE_IMAGE={base_image}\n"
    return (
        "# The interpreter: docker build --build-arg PYTHON_VERSION=3.13 .\n"
        f"ARG PYTHON_VERSION={match[1]}\nARG BASE_IMAGE=python:${{PYTHON_VERSION}}{match[2] or ''}\n"
    )


def render_dockerfile(spec: ImageSpec) -> str:
    """A multi-stage Dockerfile: dependencies built in ``builder``, only the venv and models in the final stage."""
    install_ferry = (
        f"COPY {SOURCE_DIR}/ /tmp/{SOURCE_DIR}/\nRUN pip install --no-cache-dir --no-deps /tmp/{SOURCE_DIR}\n"
        if spec.ferry_from_source
        else ""
    )
    apt = ""
    if spec.apt_packages:
        apt = (
            "# System libraries the model runtimes link against (not shipped in their wheels).\n"
            "RUN apt-get update \\\n"
            f"    && apt-get install -y --no-install-recommends {' '.join(spec.apt_packages)} \\\n"
            "    && rm -rf /var/lib/apt/lists/*\n"
        )
    models_dir_step = (
        f"COPY {MODELS_CONTEXT_DIR}/ {MODELS_DIR}/\n"
        if spec.include_models
        else f"RUN install -d -o {UID} -g {GID} {MODELS_DIR}\n"
    )
    # Every bundle loads once at build: a dependency missing from the image fails `docker build`, not the pod.
    flags = (', "--trust-code"' if spec.trust_code else "") + (', "--trust-pickle"' if spec.trust_pickle else "")
    flags += ', "--original-models"' if spec.original_models else ""
    flags += f', "{ALLOW_FLAG}"' if spec.allow_requirement_options else ""
    verify = f'RUN ["ferry", "verify", "{MODELS_DIR}"{flags}]\n' if spec.include_models else ""
    labels = " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in image_labels(spec).items())
    env = {
        "PATH": f"{VENV_DIR}/bin:$PATH",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        **container_env(
            **({"trust_code": True} if spec.trust_code else {}),
            **({"trust_pickle": True} if spec.trust_pickle else {}),
            **({"original_models": True} if spec.original_models else {}),
        ),
    }
    env_lines = " \\\n    ".join(f"{k}={v}" for k, v in env.items())
    return f"""\
# Written by `ferry containerize`. Rebuild with: docker build -t {spec.image} .
{base_image_args(spec.base_image)}
FROM ${{BASE_IMAGE}} AS builder
RUN python -m venv {VENV_DIR}
ENV PATH={VENV_DIR}/bin:$PATH \\
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Pinned dependencies first: this layer is reused until requirements.txt changes.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --requirement /tmp/requirements.txt
{install_ferry}
FROM ${{BASE_IMAGE}}
{apt}# A fixed, numeric non-root UID, so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid {GID} ferry \\
    && useradd --system --uid {UID} --gid {GID} --no-create-home --home-dir /nonexistent \\
       --shell /usr/sbin/nologin ferry
COPY --from=builder {VENV_DIR} {VENV_DIR}
ENV {env_lines}
EXPOSE {HTTP_PORT} {GRPC_PORT} {PROBE_PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\
    CMD {json.dumps(healthcheck_command())}
ENTRYPOINT ["ferry", "serve"]
# What changes with the models comes last: an image of other models reuses every layer above.
{models_dir_step}{verify}USER {UID}:{GID}
LABEL {labels}
"""


def render_dockerignore() -> str:
    return "**/__pycache__\n**/*.pyc\n**/.git\n**/.DS_Store\n"


def render_requirements(spec: ImageSpec) -> str:
    lines = pinned_requirements(spec.extras, packages=spec.packages)
    pinned = {line.split("==")[0] for line in lines}
    for requirement in sorted({r for m in spec.models for r in m.requirements}):
        line = pin_if_installed(requirement)
        if line.split("==")[0] not in pinned:  # one pin per package: the environment's, which built the models
            lines.append(line)
            pinned.add(line.split("==")[0])
    if not spec.ferry_from_source:
        extras = f"[{','.join(sorted(spec.extras))}]" if spec.extras else ""
        lines.append(f"ferry{extras}=={spec.ferry_version}")
    header = "# Pinned by `ferry containerize` from the environment that built the models.\n"
    return header + "\n".join(lines) + "\n"


def ferry_source_root() -> Path | None:
    """The project folder when ferry is installed from a local source tree (editable or not), else None."""
    try:
        text = metadata.distribution("ferry").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    url = json.loads(text).get("url", "") if text else ""
    root = Path(url.removeprefix("file://")) if url.startswith("file://") else None
    return root if root is not None and (root / "pyproject.toml").is_file() else None


def image_spec_for(
    repo: Path,
    image: str,
    *,
    include_models: bool = True,
    base_image: str = DEFAULT_BASE_IMAGE,
    source: str = "",
    extras: tuple[str, ...] = (),
    trust_code: bool = False,
    trust_pickle: bool = False,
    original_models: bool = False,
    allow_requirement_options: bool = False,
) -> ImageSpec:
    models = model_refs(repo, allow_requirement_options)
    if not models:
        raise SpecError(f"{repo}: no bundles found (expected REPO/<name>/<version>/{MANIFEST_FILE})")
    try:
        version = metadata.version("ferry")
        known = set(metadata.metadata("ferry").get_all("Provides-Extra") or [])
    except metadata.PackageNotFoundError:
        version, known = "0.0.0", set(extras)
    unknown = sorted(set(extras) - known)
    if unknown:
        raise SpecError(f"unknown extra {', '.join(unknown)}; Ferry's extras are {', '.join(sorted(known))}")
    return ImageSpec(
        image=image,
        models=models,
        include_models=include_models,
        base_image=base_image,
        ferry_version=version,
        ferry_from_source=ferry_source_root() is not None,
        source=source,
        more_extras=tuple(sorted(set(extras))),
        trust_code=trust_code,
        trust_pickle=trust_pickle,
        original_models=original_models,
        allow_requirement_options=allow_requirement_options,
    )


def write_build_context(repo: Path, out: Path, spec: ImageSpec) -> list[Path]:
    """Write the Dockerfile, .dockerignore, requirements, Ferry's source and (unless model-load) the bundles."""
    for m in spec.models if spec.include_models else ():  # nothing from outside a bundle goes into the image
        escaping = links_leading_out(repo / m.name / m.version)
        if escaping:
            raise SpecError(f"{m.name}/{m.version}: '{escaping[0]}' is a link that leads out of the bundle")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("Dockerfile", render_dockerfile(spec)),
        (".dockerignore", render_dockerignore()),
        ("requirements.txt", render_requirements(spec)),
    ):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".git")
    root = ferry_source_root()
    if spec.ferry_from_source and root is not None:
        target = out / SOURCE_DIR
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, target / name)
        shutil.copytree(root / "src", target / "src", ignore=ignore)
        written.append(target)
    models = out / MODELS_CONTEXT_DIR
    shutil.rmtree(models, ignore_errors=True)
    if spec.include_models:
        for m in spec.models:
            shutil.copytree(repo / m.name / m.version, models / m.name / m.version, ignore=ignore)
        _make_world_readable(models)
        written.append(models)
    return written


def _make_world_readable(root: Path) -> None:
    """Bundles are often built in private (0700) temp folders; the image's non-root user must still read them."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _label_key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())
