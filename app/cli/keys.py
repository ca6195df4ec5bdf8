"""``rr keys hash|generate|check``: make and check the entries of an API key file (RR_KEYS_FILE).

The file stores the SHA-256 of each secret, never the secret: ``rr keys hash``
reads a secret on stdin (or asks for it, without echo, on a terminal) and
prints what goes in ``hash = ...``; ``rr keys generate`` makes a new random
secret and prints both; ``rr keys check`` loads a file as the server would, so
a bad edit is caught before a reload.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer

keys_cli = typer.Typer(name="keys", help="Make and check API key file entries (RR_KEYS_FILE).", no_args_is_help=True)

#: Bytes of randomness in a generated secret (256 bits, URL-safe base64: 43 characters).
SECRET_BYTES = 32


@keys_cli.command("hash")
def hash_command() -> None:
    """Print `sha256:<hex>` of a secret read from stdin (on a terminal: asked for, not echoed)."""
    from app.api.keys import hash_secret

    if sys.stdin.isatty():
        secret = typer.prompt("secret", hide_input=True)
    else:
        secret = sys.stdin.read()
    secret = secret.strip()  # a Bearer header carries no surrounding spaces, and `echo` adds a newline
    if not secret:
        raise typer.BadParameter('the secret is empty: send it on stdin, e.g. `printf %s "$KEY" | rr keys hash`')
    typer.echo(hash_secret(secret))


@keys_cli.command("generate")
def generate_command(
    name: Annotated[str, typer.Option(help="The new key's name, for the printed [[keys]] entry.")] = "new-key",
) -> None:
    """Make a random secret; print it (give it to the client) and a [[keys]] entry with its hash (for the file)."""
    from app.api.keys import hash_secret

    secret = secrets.token_urlsafe(SECRET_BYTES)
    typer.echo(f"secret (give it to the client; it is not stored anywhere): {secret}", err=True)
    typer.echo(f'[[keys]]\nname = "{name}"\nhash = "{hash_secret(secret)}"\nscopes = ["search"]')


@keys_cli.command("check")
def check_command(path: Annotated[Path, typer.Argument(help="The key file to check.")]) -> None:
    """Load a key file as the server does; print its keys (names, scopes, experts), or the entry that is wrong."""
    from app.api.keys import read_key_file

    keys = read_key_file(path)  # KeyFileError: `rr` prints it as one line and exits 2
    typer.echo(json.dumps([key.public() for key in keys], indent=2))
