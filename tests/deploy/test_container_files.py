"""The container files checked without a Docker engine: lint, one install procedure, compose ↔ Dockerfile.

No Docker engine runs on our machines or in CI, so what can be checked without one is: hadolint's
rules over the Dockerfile (with ShellCheck over its RUN lines), ShellCheck over the scripts, that the
image, `make install` and so CI install through the same script, that the build context lets through
what the Dockerfile copies, and that the compose file agrees with the image. test_entrypoint.py starts
the image's command itself.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

from app.settings import Settings
from tests.deploy.image_spec import INSTALL_SCRIPT, REPO, ImageSpec, read_image_spec

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"


@pytest.fixture(scope="module")
def spec() -> ImageSpec:
    return read_image_spec(DOCKERFILE)


def _tool(name: str) -> str:
    """A linter installed by the dev extra: beside this interpreter (the venv's bin/), else on PATH."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:  # a dev dependency (pyproject.toml), so never skipped
        pytest.fail(f"{name} not found: install the dev extra (`make install`)")
    return found


def hadolint(path: Path, cwd: Path) -> list[dict]:
    """hadolint's findings at every level (style included), as JSON; an empty config so no local one applies."""
    config = cwd / "hadolint-empty.yaml"
    config.write_text("{}\n")
    result = subprocess.run(
        [_tool("hadolint"), "--config", str(config), "--format", "json", "--failure-threshold", "style", str(path)],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout or "[]")


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    findings = hadolint(DOCKERFILE, tmp_path)
    assert [f"line {f['line']}: {f['code']} {f['message']}" for f in findings] == []


def test_hadolint_does_catch_what_it_should(tmp_path: Path) -> None:
    """The lint is not vacuous: a Dockerfile with the usual faults is reported, rule by rule."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nCMD rr serve\n")
    codes = {finding["code"] for finding in hadolint(bad, tmp_path)}
    assert {"DL3006", "DL3013", "DL3042", "DL3025"} <= codes  # untagged base, unpinned, pip cache, shell-form CMD


@pytest.mark.parametrize("script", [INSTALL_SCRIPT, "docker/add-expert.sh", ".ci/run"])
def test_shell_scripts_pass_shellcheck(script: str) -> None:
    argv = [_tool("shellcheck"), "--severity=style", str(REPO / script)]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_make_and_ci_install_through_one_script(spec: ImageSpec) -> None:
    """One install procedure: the Dockerfile and the Makefile (which .ci/run calls) run scripts/install.sh; nothing else pip-installs."""
    assert len(spec.install_steps()) == 1, "the image installs the project with exactly one call of the script"
    makefile = (REPO / "Makefile").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^\t.*\bbash scripts/install\.sh\b.*--editable", makefile, re.MULTILINE), (
        "make install runs the script"
    )
    assert re.search(r"^make test$", ci, re.MULTILINE), ".ci/run installs with `make test` (make install)"
    for name, text in {"Dockerfile": DOCKERFILE.read_text(), "Makefile": makefile, ".ci/run": ci}.items():
        assert "pip install" not in text, f"{name} installs with pip itself instead of through {INSTALL_SCRIPT}"
    # The build stage copies the script before running it, and the torch index is an option of that script.
    build = spec.stages[0]
    assert any(INSTALL_SCRIPT in sources for sources, _, _ in build.copies)
    assert "TORCH_INDEX_URL" in build.args and "TORCH_INDEX_URL" in (REPO / INSTALL_SCRIPT).read_text()


def test_the_image_is_a_slim_multistage_non_root_service(spec: ImageSpec) -> None:
    assert len(spec.stages) >= 2, "multi-stage: the runtime stage has no build tooling"
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base) for stage in spec.stages)
    assert spec.stages[0].args["TORCH_INDEX_URL"].endswith("/whl/cpu"), "the CPU torch wheel"
    final = spec.final
    assert final.user is not None and final.user.split(":")[0] not in ("0", "root"), "runs as a non-root user"
    assert any(source == ("/opt/rr",) and "--from=build" in flags for source, _, flags in final.copies)
    assert final.env["HF_HUB_OFFLINE"] == "1" and final.env["TRANSFORMERS_OFFLINE"] == "1"
    assert final.cmd == ["serve"], (
        "a production image serves the experts in its volume; `demo` is the documented alternative"
    )
    assert "/healthz" in " ".join(final.healthcheck)
    # The data root is inside the volume, and the service listens where the image says it does.
    data_dir = Path(final.env["RR_DATA_DIR"])
    assert any(data_dir == Path(volume) or Path(volume) in data_dir.parents for volume in final.volumes)
    assert final.exposed == [final.env["RR_PORT"]] and final.env["RR_HOST"] == "0.0.0.0"


def test_every_rr_variable_the_container_files_name_is_a_setting(spec: ImageSpec) -> None:
    """A typo in an RR_* name would be ignored silently by pydantic-settings (extra="ignore"); catch it here."""
    fields = {f"RR_{name.upper()}" for name in Settings.model_fields}
    compose_env = _environment(yaml.safe_load(COMPOSE.read_text())["services"]["rr"])
    named = {key for key in [*spec.final.env, *compose_env] if key.startswith("RR_")}
    assert named and named - fields == set()


def _environment(service: dict) -> dict[str, str | None]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict((item.split("=", 1) + [None])[:2] for item in environment)  # type: ignore[misc]
    return dict(environment)


def _mount(volume: str) -> tuple[str, str, str]:
    """Compose's short volume syntax ``SOURCE:TARGET[:MODE]`` -> (source, target, mode); SOURCE may hold ``${X:-default}``."""
    source, target, mode = re.fullmatch(r"(.+?):(/[^:]*)(?::(\w+))?", str(volume)).groups()  # type: ignore[union-attr]
    return source, target, mode or "rw"


def _target_port(mapping: str) -> str:
    return str(mapping).rsplit(":", 1)[-1].split("/")[0]


def test_compose_runs_the_image_with_its_volume_and_port(spec: ImageSpec) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    final = spec.final
    for name in ("rr", "demo"):
        service = services[name]
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        mounts = [_mount(volume) for volume in service["volumes"]]
        named = [(source, target) for source, target, _ in mounts if source in (compose.get("volumes") or {})]
        assert [target for _, target in named] == final.volumes, (
            "the named volume is mounted where the image's VOLUME is"
        )
        assert [_target_port(port) for port in service["ports"]] == [final.env["RR_PORT"]]
        environment = _environment(service)
        # Only pass-through names (no value): configuration stays the image's and the operator's.
        assert all(value is None for value in environment.values()), environment
        assert not {"RR_DATA_DIR", "RR_PORT", "RR_HOST"} & set(environment), "would move what the image fixes"
        assert "healthcheck" not in service, "the image's HEALTHCHECK applies"
    assert services["rr"]["command"] == final.cmd
    demo = services["demo"]
    assert demo["command"] == ["demo"] and demo["profiles"] == ["demo"]
    datasets = [mode for _, target, mode in map(_mount, demo["volumes"]) if target == final.env["RR_DATASETS_DIR"]]
    assert datasets == ["ro"], "the demo reads the collections at RR_DATASETS_DIR, read-only"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        regex = fnmatch.translate(glob).replace(".*.*/", "(.*/)?")  # ** matches any number of directories
        if any(re.match(regex, candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_the_build_context_lets_through_exactly_what_the_dockerfile_copies(spec: ImageSpec) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    copied = [source for sources, _, flags in spec.stages[0].copies if not flags for source in sources]
    for source in copied:
        files = (
            [source]
            if (REPO / source).is_file()
            else [
                str(p.relative_to(REPO))
                for p in (REPO / source).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            ]
        )
        assert files and not [f for f in files if _ignored(f, patterns)], f"{source} is copied but ignored"
    for kept_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/experts/registry.json",
        "tests/conftest.py",
        "app/__pycache__/x.pyc",
    ):
        assert _ignored(kept_out, patterns), f"{kept_out} would be sent to the builder"
