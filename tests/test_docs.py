"""The docs stay true to the code: a short README linking every page, links that resolve, `rr` commands that parse.

Every `rr ...` line quoted in a fenced code block of README.md or docs/*.md must name a real
subcommand and only options that subcommand accepts, read from the Typer app itself (the
structural equivalent of running its ``--help``: no server, model or data is needed). The
``RR_*`` settings table must list every field of ``app.settings.Settings``.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
RR_LINE = re.compile(r"^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*rr(\s|$)")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&"}
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks, inline code removed."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, INLINE_CODE.sub("", line)


def fenced_commands(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, command) of every logical line in fenced code blocks, ``\\`` continuations joined."""
    fenced, pending, start = False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced, pending = not fenced, ""
            continue
        if not fenced:
            continue
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


# ---------------------------------------------------------------------------- README
def test_readme_is_short_and_keeps_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES, f"README.md has {len(text.splitlines())} lines"
    assert "make test" in text and "make demo" in text


def test_readme_links_every_docs_page() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for page, _, target in _links() if page == README}
    assert [_rel(page) for page in DOCS if page.resolve() not in linked] == []


# ---------------------------------------------------------------------------- links
def _links() -> list[tuple[Path, int, str]]:
    return [
        (page, number, match.group(1))
        for page in PAGES
        for number, line in prose_lines(page)
        for match in LINK.finditer(line)
    ]


def test_relative_links_point_to_existing_files_and_headings() -> None:
    links = _links()
    assert len(links) > 20, "found almost no links: is the pattern still right?"
    broken = []
    for page, number, target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(f"{_rel(page)}:{number}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{_rel(page)}:{number}: {target} (no heading with that anchor)")
    assert broken == []


# ---------------------------------------------------------------------------- rr commands
# Typer builds click objects (its own vendored copy of click, in recent versions), so they are read by
# their attributes: a group has ``commands``, a parameter ``param_type_name``, ``opts``, ``secondary_opts``.
@pytest.fixture(scope="module")
def rr() -> Any:
    from app.cli.commands import cli

    command = typer.main.get_command(cli)
    assert hasattr(command, "commands"), "the rr app is not a group of subcommands"
    return command


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def _options(command: Any) -> dict[str, Any]:
    """Every option string the command accepts (``--help`` included), mapped to its parameter."""
    options: dict[str, Any] = {"--help": None}
    for param in command.params:
        if param.param_type_name == "option":
            options.update(dict.fromkeys([*param.opts, *param.secondary_opts], param))
    return options


def _takes_value(param: Any) -> bool:
    return param is not None and not param.is_flag and not param.count


def rr_commands() -> list[tuple[Path, int, list[str]]]:
    """Every quoted `rr` command as its tokens after `rr` (leading VAR=value and shell pipes dropped)."""
    found = []
    for page in PAGES:
        for number, line in fenced_commands(page):
            if not RR_LINE.match(line):
                continue
            tokens = shlex.split(line, comments=True)
            while tokens and ENV_ASSIGNMENT.match(tokens[0]):
                tokens.pop(0)
            for i, token in enumerate(tokens):
                if token in SHELL_OPERATORS or token[:1] in {">", "<"}:
                    tokens = tokens[:i]
                    break
            found.append((page, number, tokens[1:]))
    return found


def check_rr_command(group: Any, args: list[str]) -> list[str]:
    """What is wrong with ``rr ARGS``, as messages; empty when it parses."""
    problems = []
    args = list(args)
    global_options = _options(group)
    asked_help = False
    while args and args[0].startswith("-"):
        name = args.pop(0)
        option = name.split("=", 1)[0]
        asked_help |= option == "--help"
        if option not in global_options:
            return [f"{option!r} is not a global option (valid: {sorted(global_options)})"]
        if "=" not in name and _takes_value(global_options[option]) and args:
            args.pop(0)
    command = group
    while _is_group(command):
        if not args:
            return [] if command is not group or asked_help else ["no subcommand"]
        name = args.pop(0)
        if name not in command.commands:
            return [f"no subcommand {name!r} (valid: {sorted(command.commands)})"]
        command = command.commands[name]
    valid = _options(command)
    for token in args:
        if token.startswith("-") and token != "-" and not NUMBER.match(token):
            option = token.split("=", 1)[0]
            if option not in valid:
                problems.append(f"{command.name}: no option {option!r} (valid: {sorted(valid)})")
    return problems


def test_the_checker_catches_stale_commands(rr: Any) -> None:
    assert check_rr_command(rr, ["search", "-k", "5", "--top-k", "2", "query"]) == []
    assert check_rr_command(rr, ["--data-dir", "x", "-v", "documents", "merge", "--expert", "a"]) == []
    assert check_rr_command(rr, ["--help"]) == [] and check_rr_command(rr, ["index", "--help"]) == []
    assert check_rr_command(rr, ["serch", "query"])
    assert check_rr_command(rr, ["search", "--no-such-option", "query"])
    assert check_rr_command(rr, ["--no-such-global", "search"])
    assert check_rr_command(rr, ["documents", "rename"])
    assert check_rr_command(rr, ["--data-dir", "x"])


def test_every_quoted_rr_command_names_a_subcommand_and_its_options(rr: Any) -> None:
    commands = rr_commands()
    assert len(commands) > 20, "found almost no rr commands: is the extraction still right?"
    problems = [
        f"{_rel(page)}:{number}: rr {' '.join(args)}: {problem}"
        for page, number, args in commands
        for problem in check_rr_command(rr, args)
    ]
    assert problems == []


def test_quoted_scripts_and_serve_targets_exist() -> None:
    """Paths of the repository's scripts in quoted commands exist; `serve run module:name` names a real one."""
    missing = []
    for page in PAGES:
        for number, line in fenced_commands(page):
            for token in re.findall(r"(?<![\w/.])(?:bench|docker|scripts)/[\w./-]+", line):
                if not (ROOT / token).exists():
                    missing.append(f"{_rel(page)}:{number}: {token}")
            for module, name in re.findall(r"\bserve run ([\w.]+):(\w+)", line):
                if name not in getattr(importlib.import_module(module), "__all__", ()):
                    missing.append(f"{_rel(page)}:{number}: {module}:{name}")
    assert missing == []


# ---------------------------------------------------------------------------- settings
def settings_fields() -> list[str]:
    """The fields of ``app.settings.Settings``, read from its source (no import)."""
    tree = ast.parse((ROOT / "app" / "settings.py").read_text())
    settings = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings")
    return [
        node.target.id
        for node in settings.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id != "model_config"
    ]


def test_configuration_lists_every_setting() -> None:
    fields = settings_fields()
    assert "data_dir" in fields and len(fields) > 20
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert [f"RR_{name.upper()}" for name in fields if f"`RR_{name.upper()}`" not in text] == []
