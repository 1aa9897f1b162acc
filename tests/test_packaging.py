"""What the package promises about its environment: Python versions, dependency ranges that admit the official
clients (tritonclient, kserve, mlserver pin protobuf < 7), generated gRPC code that runs on every protobuf runtime
in that range, and the image's interpreter as a build argument. scripts/ci-clients installs them together for real.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from ferry.deploy import dockerfile
from ferry.grpc import inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def requirement(name: str) -> Requirement:
    (found,) = (r for r in map(Requirement, PROJECT["dependencies"]) if r.name == name)
    return found


@pytest.mark.parametrize("implementation", ["upb", "python"])
def test_generated_modules_import_without_a_warning(implementation: str) -> None:
    """A fresh interpreter, warnings as errors: protobuf warns (or fails) when gencode and runtime disagree."""
    code = "import ferry.grpc.inference_pb2_grpc, google.protobuf.internal.api_implementation as a; print(a.Type())"
    env = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": implementation, "PATH": ""}
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.strip() == implementation


def test_generated_code_checks_no_protobuf_runtime_version() -> None:
    """Gencode that calls ValidateProtobufRuntimeVersion fails on a runtime two majors newer (scripts/gen-grpc)."""
    source = Path(inference_pb2.__file__).read_text(encoding="utf-8")
    assert "runtime_version" not in source
    assert "_pool = _descriptor_pool.DescriptorPool()" in source  # beside tritonclient's and KServe's stubs


def test_dependency_ranges_admit_the_official_clients() -> None:
    # protobuf: mlserver 1.7 allows >=5.27.2,<7; tritonclient 2.73 and kserve 0.21 >=6.30 / >=6.33.5,<7.
    protobuf = requirement("protobuf").specifier
    for version in ("5.27.2", "5.29.6", "6.30.0", "6.33.6", "7.36.2"):
        assert protobuf.contains(version), version
    # grpcio: the generated stubs refuse an older grpcio than the plugin that wrote them, so that is the floor.
    grpcio = requirement("grpcio").specifier
    generated = Version(inference_pb2_grpc.GRPC_GENERATED_VERSION)
    assert {s.operator for s in grpcio} == {">="} and min(Version(s.version) for s in grpcio) == generated
    for version in ("1.67.1", "1.73.0", "1.81.1"):  # mlserver, kserve, tritonclient
        assert grpcio.contains(version), version


def test_python_versions() -> None:
    assert PROJECT["requires-python"] == ">=3.11"
    versions = {c.rsplit(" :: ", 1)[1] for c in PROJECT["classifiers"] if re.search(r"Python :: 3\.\d+$", c)}
    assert versions == {"3.11", "3.12", "3.13"}


def image(base_image: str) -> dockerfile.ImageSpec:
    model = dockerfile.ModelRef("m", "1", "sklearn", "0" * 64)
    return dockerfile.ImageSpec("m:1", (model,), base_image=base_image)


def base_image_after_build_args(text: str, build_args: dict[str, str]) -> str:
    """What ``FROM ${BASE_IMAGE}`` names after ``docker build --build-arg``: ARGs in order, ${VAR} expanded."""
    values: dict[str, str] = {}
    for name, default in re.findall(r"^ARG (\w+)=(.*)$", text.split("\nFROM ")[0], flags=re.MULTILINE):
        values[name] = build_args.get(name, re.sub(r"\$\{(\w+)\}", lambda m: values[m[1]], default))
    assert text.count("\nFROM ${BASE_IMAGE}") == 2
    return values["BASE_IMAGE"]


def test_dockerfile_python_version_is_a_build_argument() -> None:
    text = dockerfile.render_dockerfile(image(dockerfile.DEFAULT_BASE_IMAGE))
    assert "\nARG PYTHON_VERSION=3.11\nARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm\n" in text
    assert base_image_after_build_args(text, {}) == "python:3.11-slim-bookworm"
    assert base_image_after_build_args(text, {"PYTHON_VERSION": "3.13"}) == "python:3.13-slim-bookworm"
    assert base_image_after_build_args(text, {"BASE_IMAGE": "python:3.12-slim"}) == "python:3.12-slim"


@pytest.mark.parametrize(
    ("base_image", "python_version"),
    [("python:3.12-slim", "3.12"), ("python:3.13.1", "3.13.1"), ("debian:12-slim", None), ("my/python:3.11", None)],
)
def test_dockerfile_python_version_of_another_base_image(base_image: str, python_version: str | None) -> None:
    text = dockerfile.render_dockerfile(image(base_image))
    assert base_image_after_build_args(text, {}) == base_image
    assert ("ARG PYTHON_VERSION=" in text) == (python_version is not None)
    if python_version is not None:
        assert f"\nARG PYTHON_VERSION={python_version}\n" in text
