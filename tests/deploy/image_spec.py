"""What the Dockerfile declares, read with Docker's own parser (the ``dockerfile`` package wraps BuildKit's Go parser).

The deploy tests take the entrypoint, the environment, the health check and the install step from
here rather than repeating them, so the image and its tests cannot drift apart.

>>> spec = read_image_spec(REPO / "Dockerfile")
>>> spec.command
['rr', 'serve']
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = "scripts/install.sh"


@dataclass
class Stage:
    """One ``FROM`` stage: its base image, name and the instructions that matter to the tests."""

    base: str
    name: str | None
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = field(default_factory=list)  # sources, target, flags
    runs: list[str] = field(default_factory=list)
    user: str | None = None
    workdir: str | None = None
    volumes: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)  # exec form, after "CMD"
    healthcheck_flags: tuple[str, ...] = ()


@dataclass
class ImageSpec:
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def command(self) -> list[str]:
        """What ``docker run IMAGE`` executes: ENTRYPOINT followed by CMD (both exec form)."""
        return [*self.final.entrypoint, *self.final.cmd]

    def install_steps(self) -> list[list[str]]:
        """Every RUN (any stage) that calls the install script, as argv from the script's path on."""
        steps = []
        for stage in self.stages:
            for run in stage.runs:
                words = shlex.split(run)
                for position, word in enumerate(words):
                    if word.endswith(INSTALL_SCRIPT):
                        steps.append(words[position:])
        return steps


def _exec_form(command: dockerfile.Command) -> list[str]:
    if not command.json:
        raise AssertionError(
            f"line {command.start_line}: {command.cmd} must use the exec (JSON) form: {command.original}"
        )
    return list(command.value)


def _pairs(values: tuple[str, ...]) -> dict[str, str]:
    """ENV/ARG ``key=value`` pairs, as the parser splits them (quotes stripped the way a shell would)."""
    result = {}
    for key, value in zip(values[0::2], values[1::2], strict=True):
        result[key] = " ".join(shlex.split(value)) if value else ""
    return result


def read_image_spec(path: Path) -> ImageSpec:
    """Parse ``path`` into its stages; refuses shell-form ENTRYPOINT/CMD/HEALTHCHECK (signals would not reach rr)."""
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            words = list(command.value)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
            continue
        if not stages:
            continue  # global ARGs before the first FROM
        stage = stages[-1]
        if command.cmd == "ENV":
            stage.env.update(_pairs(command.value))
        elif command.cmd == "ARG":
            for word in command.value:
                key, _, default = word.partition("=")
                stage.args[key] = default
        elif command.cmd == "COPY":
            stage.copies.append((tuple(command.value[:-1]), command.value[-1], command.flags))
        elif command.cmd == "RUN":
            stage.runs.append(" ".join(command.value))
        elif command.cmd == "USER":
            stage.user = command.value[0]
        elif command.cmd == "WORKDIR":
            stage.workdir = command.value[0]
        elif command.cmd == "VOLUME":
            stage.volumes.extend(command.value)
        elif command.cmd == "EXPOSE":
            stage.exposed.extend(command.value)
        elif command.cmd == "ENTRYPOINT":
            stage.entrypoint = _exec_form(command)
        elif command.cmd == "CMD":
            stage.cmd = _exec_form(command)
        elif command.cmd == "HEALTHCHECK":
            if not command.json or command.value[0] != "CMD":
                raise AssertionError(f"HEALTHCHECK must be `CMD [...]` in exec form: {command.original}")
            stage.healthcheck = list(command.value[1:])
            stage.healthcheck_flags = command.flags
    return ImageSpec(stages)


def expand(value: str, environment: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced from ``environment`` (unset: empty), as Docker expands ENV values."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: environment.get(m.group(1) or m.group(2), ""), value)
