"""Run ``rr`` commands in real child processes that start in milliseconds instead of seconds.

The fault tests kill ``rr index`` and ``rr serve`` a dozen times each. A
fresh interpreter spends about 5 s of CPU importing torch, transformers,
peft, faiss and uvicorn before it does anything (measured on the 2-core CI
machine), which would make those tests minutes long. So the children come
from a :mod:`multiprocessing` *forkserver* that imports those modules once:
each child is a real, separate process (its own pid, killed with a real
``SIGKILL``, its own open files and memory) running the very function
behind the ``rr`` console script, :func:`app.cli.commands.main`, with ``sys.argv``,
the environment and the working directory set as a shell would set them.

The forkserver never runs a model (it only imports), so forking it is safe:
no OpenMP or tokenizer thread pool exists yet when a child is forked.

:class:`ForkedProcess` looks like :class:`subprocess.Popen` (``pid``,
``poll``, ``wait``, ``send_signal``, ``kill``, ``returncode``), so
:class:`tests.app.service.conftest.ServerProcess` can run a server this way.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

#: Imported once by the forkserver; every child starts with them loaded.
PRELOAD = [
    "torch",
    "transformers.models.bert.modeling_bert",
    "peft",
    "faiss",
    "bm25s",
    "uvicorn",
    "app.cli.commands",
    "app.offline.building",
    "app.api.main",
    "tests.reliability.forked",
]

_context: multiprocessing.context.ForkServerContext | None = None


def _forkserver() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _run_rr(argv: list[str], env: dict[str, str], cwd: str, log: str, fsize_limit: int | None) -> None:
    """The child: redirect stdout and stderr to ``log``, take ``env`` and ``cwd``, then run ``rr argv``.

    ``fsize_limit`` sets RLIMIT_FSIZE, the largest file this process may
    write: past it a write fails with EFBIG, as on a full disk (Python
    ignores SIGXFSZ, so the process is not killed by the signal).
    """
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    if fsize_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))
    from app.cli.commands import main

    sys.argv = ["rr", *argv]
    main()  # exits through SystemExit; multiprocessing turns its code into the exit code


class ForkedProcess:
    """``rr argv`` in a child forked from the preloaded server; a :class:`subprocess.Popen` look-alike."""

    def __init__(
        self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path, fsize_limit: int | None = None
    ) -> None:
        self.args = ["rr", *argv]
        self._process = _forkserver().Process(
            target=_run_rr, args=(argv, env, str(cwd), str(log), fsize_limit), daemon=False
        )
        self._process.start()
        self.pid: int = self._process.pid  # type: ignore[assignment]

    @property
    def returncode(self) -> int | None:
        """Exit status once ended: the code passed to exit, or minus the signal number (-9 after SIGKILL)."""
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def rr_environment(**variables: str) -> dict[str, str]:
    """This process's environment without any ``RR_*`` variable, plus ``variables`` (what a clean shell passes)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RR_")}
    environment.update(variables)
    return environment
