"""The image's command, started the way the image starts it, without a Docker engine.

The build context the Dockerfile copies is copied to a temporary folder, scripts/install.sh is run
there with the Dockerfile's own arguments into a fresh virtual environment, and then ENTRYPOINT + CMD
run with the Dockerfile's ENV (its /opt/rr replaced by that venv), a fresh HOME and an empty data
root: the server must come up on the bundled MiniLM with hub access forbidden, pass its HEALTHCHECK
command, take an expert through docker/add-expert.sh and stop cleanly on SIGTERM.

Two departures from a real image, both to keep CI at seconds rather than a 2 GB install: the venv
reaches the test environment's installed dependencies through a .pth file (pip sees them as already
satisfied, so PIP_NO_INDEX=1 holds: nothing is downloaded), and the server listens on 127.0.0.1 and
a free port instead of 0.0.0.0:8000, as `docker run -e RR_HOST=... -e RR_PORT=...` would make it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.image_spec import (
    INSTALL_SCRIPT,
    REPO,
    ImageSpec,
    expand,
    read_image_spec,
)

pytestmark = pytest.mark.slow

ADMIN_KEY = "deploy-test-admin-key"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Installed:
    spec: ImageSpec
    venv: Path
    image_venv: str  # where the image puts it (/opt/rr)
    output: str  # what the install script printed
    seconds: float


def _copy_build_context(spec: ImageSpec, context: Path) -> None:
    """What the build stage's COPY lines take from the repository, and nothing else."""
    for sources, _, flags in spec.stages[0].copies:
        assert not flags, "the build stage copies from the build context only"
        for source in sources:
            origin, target = REPO / source, context / source
            target.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, target)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    spec = read_image_spec(REPO / "Dockerfile")
    (step,) = spec.install_steps()
    args = step[1:]
    image_venv = args[args.index("--venv") + 1]
    context = tmp_path_factory.mktemp("build-context")
    _copy_build_context(spec, context)
    venv = tmp_path_factory.mktemp("image") / "opt-rr"
    # The fresh venv sees the test environment's packages (the "wheel cache"), not its own pip or setuptools.
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    paths = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (purelib / "zz-test-environment.pth").write_text("".join(f"{path}\n" for path in paths))
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RR_", "HF_", "TRANSFORMERS_", "PYTHON"))}
    # TORCH_INDEX_URL as the image passes it, at an empty local index: the script's torch step runs (pin read
    # from pyproject.toml) and is satisfied by the installed torch. PIP_NO_BUILD_ISOLATION=0 means "no isolation".
    empty_index = tmp_path_factory.mktemp("empty-index")
    environment.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", TORCH_INDEX_URL=empty_index.as_uri())
    argv = ["bash", str(context / INSTALL_SCRIPT), *[str(venv) if a == image_venv else a for a in args]]
    started = time.monotonic()
    result = subprocess.run(
        argv, cwd=context, env=environment, check=False, capture_output=True, text=True, timeout=600
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return Installed(spec, venv, image_venv, result.stdout + result.stderr, seconds)


def container_environment(installed: Installed, *, home: Path, data: Path, port: int) -> dict[str, str]:
    """The final stage's ENV over a bare environment, as `docker run` gives the process (plus the admin key)."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    for key, value in installed.spec.final.env.items():
        environment[key] = expand(value.replace(installed.image_venv, str(installed.venv)), environment)
    environment.update(RR_DATA_DIR=str(data), RR_HOST="127.0.0.1", RR_PORT=str(port), RR_ADMIN_KEY=ADMIN_KEY)
    return environment


def test_the_install_script_makes_a_regular_install_with_the_pinned_torch(installed: Installed, tmp_path: Path) -> None:
    assert "torch==2.13.0" in installed.output, "the torch step ran with pyproject.toml's pin"
    assert "bundled base encoder loaded offline" in installed.output, "--check-offline ran"
    # A regular install: the package lives in the venv, so the image needs no source tree.
    probe = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import app.cli.commands, experts; print(app.cli.commands.__file__); print(experts.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(Path(line).is_relative_to(installed.venv) for line in probe.stdout.split()), probe.stdout
    print(f"install into a fresh venv: {installed.seconds:.1f}s")


def test_the_healthcheck_fails_when_nothing_answers(installed: Installed, tmp_path: Path) -> None:
    environment = container_environment(installed, home=tmp_path, data=tmp_path / "data", port=free_port())
    result = subprocess.run(
        installed.spec.final.healthcheck, env=environment, check=False, capture_output=True, timeout=60
    )
    assert result.returncode != 0


def _build_expert(root: Path, corpus: Path) -> tuple[Path, dict]:
    """A small MiniLM expert on 30 cranfield documents, built the way `rr create-expert/index/pilots` would."""
    from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents
    from experts import Encoder, create_expert

    encoder = Encoder(None)  # the bundled MiniLM, as the image's server loads it
    rows = [json.loads(line) for line in corpus.open() if line.strip()][:30]
    target = rows[7]
    root.mkdir(parents=True, exist_ok=True)
    sliced = root / "cranfield-30.jsonl"
    sliced.write_text("".join(json.dumps(row) + "\n" for row in rows))
    expert = create_expert(root / "experts", "cranfield", encoder=encoder, description="aeronautics (30 documents)")
    index_expert(expert, encoder, [sliced], progress=False)
    build_pilots(expert, encoder, pilot_texts_from_documents(expert, sample=30))
    return expert.path, target


class Server:
    """The image's command in a subprocess; its output in a log file shown on failure."""

    def __init__(self, argv: list[str], environment: dict[str, str], cwd: Path, log: Path) -> None:
        self.log_path = log
        self.url = f"http://127.0.0.1:{environment['RR_PORT']}"
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(argv, env=environment, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_for(self, path: str, *, timeout: float = 180.0) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                response = httpx.get(self.url + path, timeout=5)
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} not 200 after {timeout}s:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode


@pytest.fixture()
def server_factory(tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def start(argv: list[str], environment: dict[str, str], cwd: Path) -> Server:
        server = Server(argv, environment, cwd, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_the_image_command_serves_takes_an_expert_and_stops_cleanly(
    installed: Installed, datasets: Path, tmp_path: Path, server_factory
) -> None:
    spec = installed.spec
    home, data = tmp_path / "home", tmp_path / "volume"
    home.mkdir()
    data.mkdir()
    environment = container_environment(installed, home=home, data=data, port=free_port())
    executable = shutil.which(spec.command[0], path=environment["PATH"])
    assert executable is not None and Path(executable).parent == installed.venv / "bin", executable

    server = server_factory(spec.command, environment, home)
    # Built while the server starts (that takes a while on 2 cores; this is what a user builds elsewhere).
    expert, target = _build_expert(tmp_path / "host", datasets / "cranfield" / "corpus.jsonl")
    server.wait_for("/healthz")
    assert server.wait_for("/readyz").json()["experts"] == []  # an empty volume serves nothing, and is ready
    health = subprocess.run(spec.final.healthcheck, env=environment, check=False, capture_output=True, timeout=60)
    assert health.returncode == 0, health.stderr.decode(errors="replace")

    # docker/add-expert.sh, as documented: a wrong key is refused and changes nothing, the right one publishes.
    script = [str(REPO / "docker" / "add-expert.sh"), str(expert)]
    client_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RR_URL": server.url}
    run = {"capture_output": True, "text": True, "timeout": 300}
    refused = subprocess.run(script, env={**client_env, "RR_ADMIN_KEY": "wrong"}, check=False, **run)
    assert refused.returncode != 0 and '"unauthenticated"' in refused.stdout, refused.stdout + refused.stderr
    assert httpx.get(server.url + "/experts", timeout=10).json()["experts"] == []
    added = subprocess.run(script, env={**client_env, "RR_ADMIN_KEY": ADMIN_KEY}, check=False, **run)
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads(added.stdout)["name"] == "cranfield"
    assert server.wait_for("/readyz").json()["experts"] == ["cranfield"]
    assert (data / "registry.json").is_file(), "the registry lives in the data volume, so a restart serves the same set"

    query = {"query": target["title"], "k": 3}
    found = httpx.post(server.url + "/search", json=query, timeout=60).json()["results"][0]
    assert found["expert"] == "cranfield" and found["hits"][0]["id"] == target["_id"]

    code = server.stop()
    assert code in (0, -signal.SIGTERM), f"exit status {code}:\n{server.log()}"  # uvicorn re-raises SIGTERM
    assert "Application shutdown complete" in server.log()
    assert "Traceback" not in server.log(), server.log()
