"""Nothing from outside a bundle, and no package source of the bundle's choosing, reaches an image: ``ferry
containerize`` takes a bundle's requirement lines only as package specifiers (pip options, URLs and paths need
the operator's --allow-requirement-options), every path a manifest names stays inside its bundle, links that lead
out are refused, and ``ferry verify`` reports such a bundle as not ok (issue 22 item 11). ``ferry build --include
DIR`` refuses links out of DIR as the bundle loader does (item 18). Real processes on real files
(tests/hostile_files.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import ferry
from hostile_files import HOSTILE_REQUIREMENTS, edit_manifest

SECRET = "host secret: never in an image\n"


def ferry_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "FERRY_TRUST_CODE": "0", "FERRY_TRUST_PICKLE": "0"},
        timeout=120,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _bundle(tmp_path: Path, requirements: str) -> Path:
    """A real bundle built with ``--requirements``, as ``ferry build`` writes it."""
    file = tmp_path / "requirements.txt"
    file.write_text(requirements)
    classifier = LogisticRegression().fit(np.array([[0.0, 0.0], [0.1, 0.2], [1.0, 1.0], [0.9, 1.1]]), [0, 0, 1, 1])
    return ferry.build(classifier, "clf", tmp_path / "repo", requirements=file)


def _containerize(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return ferry_cli("containerize", str(tmp_path / "repo"), "--tag", "clf:1", "-o", str(tmp_path / "ctx"), *flags)


@pytest.mark.parametrize("line", HOSTILE_REQUIREMENTS)
def test_containerize_refuses_a_requirement_line_that_is_no_package(tmp_path: Path, line: str) -> None:
    _bundle(tmp_path, f"numpy>=1.26\n{line}\n")
    error = one_line_error(_containerize(tmp_path))
    assert f"clf/1: requirements.txt line 2: '{line}'" in error
    assert "--allow-requirement-options" in error
    assert not (tmp_path / "ctx").exists()  # nothing written
    # `ferry verify`, which the image build ends with, calls the bundle not ok either.
    verified = ferry_cli("verify", str(tmp_path / "repo"))
    assert f"requirements.txt line 2: '{line}'" in one_line_error(verified)
    # Only the operator's flag lets it through, and the image's own verify then gets it too.
    allowed = _containerize(tmp_path, "--allow-requirement-options")
    assert allowed.returncode == 0, allowed.stderr
    assert line in (tmp_path / "ctx" / "requirements.txt").read_text().splitlines()
    assert '"--allow-requirement-options"]' in (tmp_path / "ctx" / "Dockerfile").read_text()
    assert ferry_cli("verify", str(tmp_path / "repo"), "--allow-requirement-options").returncode == 0


def test_package_specifiers_pass_as_they_are(tmp_path: Path) -> None:
    _bundle(tmp_path, "# the class's own\nnumpy>=1.26  # a comment\nrich[jupyter]>=13; python_version>'3'\n")
    built = _containerize(tmp_path)
    assert built.returncode == 0, built.stderr
    requirements = (tmp_path / "ctx" / "requirements.txt").read_text().splitlines()
    assert "rich[jupyter]>=13; python_version>'3'" in requirements and not any("#" in r for r in requirements[1:])
    assert "--allow-requirement-options" not in (tmp_path / "ctx" / "Dockerfile").read_text()
    assert ferry_cli("verify", str(tmp_path / "repo")).returncode == 0


def _outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    return secret


@pytest.mark.parametrize("form", ["dotdot", "absolute", "listed-dotdot", "symlink"])
def test_a_requirements_path_outside_the_bundle_is_refused(tmp_path: Path, form: str) -> None:
    secret = _outside(tmp_path)
    bundle = _bundle(tmp_path, "numpy\n")
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    name = {"dotdot": "../" * 6 + str(secret).lstrip("/"), "absolute": str(secret)}.get(form, "")
    if form == "listed-dotdot":  # listed with the host file's true hash, as a tamperer would
        name = "../../secret.txt"
        edit_manifest(bundle, lambda raw: raw["artifacts"].__setitem__(name, digest))
    if form == "symlink":  # the bundle's own requirements.txt, listed with the host file's hash, is a link out
        name = "requirements.txt"
        (bundle / name).unlink()
        (bundle / name).symlink_to(secret)
        edit_manifest(bundle, lambda raw: raw["artifacts"].__setitem__(name, digest))
    edit_manifest(bundle, lambda raw: raw["options"].__setitem__("requirements", name))
    error = one_line_error(_containerize(tmp_path))
    why = ("not a relative path inside the bundle", "a link that leads out of the bundle", "is not listed")
    assert f"'{name}'" in error and any(reason in error for reason in why), error
    assert not (tmp_path / "ctx").exists()
    assert SECRET not in error
    verified = one_line_error(ferry_cli("verify", str(tmp_path / "repo")))  # (which hides server paths)
    assert "clf:1" in verified and Path(name).name in verified and SECRET not in verified


def test_containerize_refuses_a_link_that_leads_out_of_a_bundle(tmp_path: Path) -> None:
    secret = _outside(tmp_path)
    bundle = _bundle(tmp_path, "numpy\n")
    (bundle / "notes").mkdir()
    (bundle / "notes" / "readme.txt").symlink_to(secret)  # unlisted: copying the bundle would read the host file
    error = one_line_error(_containerize(tmp_path))
    assert error == "error: clf/1: 'notes/readme.txt' is a link that leads out of the bundle"
    assert not (tmp_path / "ctx").exists()


def _class_file(tmp_path: Path) -> Path:
    source = tmp_path / "model.py"
    source.write_text("class Model:\n    def predict(self, batch):\n        return [0.0 for _ in batch]\n")
    return source


def test_build_include_refuses_a_link_out_of_the_folder(tmp_path: Path) -> None:
    secret = _outside(tmp_path)
    folder = tmp_path / "assets"
    (folder / "deep").mkdir(parents=True)
    (folder / "vocab.txt").write_text("a\nb\n")
    (folder / "deep" / "vocab-link.txt").symlink_to(folder / "vocab.txt")  # inside: fine
    (folder / "deep" / "key.txt").symlink_to(secret)
    args = ["build", f"{_class_file(tmp_path)}:Model", "--name", "m", "--repo", str(tmp_path / "repo")]
    error = one_line_error(ferry_cli(*args, "--include", str(folder)))
    assert error == f"error: --include {folder}: 'deep/key.txt' is a link that leads out of the folder"
    assert not list((tmp_path / "repo").rglob("*.txt")) if (tmp_path / "repo").exists() else True
    (folder / "deep" / "key.txt").unlink()  # a link within the folder is copied as the file it names
    built = ferry_cli(*args, "--include", str(folder))
    assert built.returncode == 0, built.stderr
    copied = tmp_path / "repo" / "m" / "1" / "assets" / "deep" / "vocab-link.txt"
    assert copied.read_text() == "a\nb\n" and not copied.is_symlink()


def test_containerize_reads_no_model_file_outside_the_bundle(tmp_path: Path) -> None:
    """containerize reads a bundle's model files for what they import and whether they need trust: a listed
    artifact whose name leads out of the bundle (a pickle of the host's, listed with its true hash) is refused,
    naming it, before anything opens it."""
    import pickle

    outside = tmp_path / "host.pkl"
    outside.write_bytes(pickle.dumps(LogisticRegression()))
    bundle = _bundle(tmp_path, "numpy\n")
    name = "../../host.pkl"
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    edit_manifest(bundle, lambda raw: raw["artifacts"].__setitem__(name, digest))
    edit_manifest(bundle, lambda raw: raw["options"].__setitem__("artifact", name))
    error = one_line_error(_containerize(tmp_path))
    assert f"'{name}'" in error and "not a relative path inside the bundle" in error, error
    assert not (tmp_path / "ctx").exists()
