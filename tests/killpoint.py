"""Run the geobuild command line and signal it at a known point (for kill, resume and Ctrl-C tests).

    python tests/killpoint.py SIGNAL PATTERN N -- GEOBUILD_ARGS...

The process sends itself ``SIGNAL`` (a real ``os.kill``: SIGKILL ends it on the spot, SIGINT raises
KeyboardInterrupt as Ctrl-C does) right after the Nth atomic write whose final path matches
``PATTERN`` (``PurePath.match``, e.g. ``distances/00003.parquet`` or ``done/mine/*``) has filled its
temporary file and before that file is renamed into place. So the kill point does not depend on
timing: the unit's temporary output exists, its final output and marker do not.

:func:`run_killed` starts it and checks that the signal really ended the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path, PurePath

REPO = Path(__file__).resolve().parent.parent


def install(sig: signal.Signals, pattern: str, nth: int) -> None:
    """Wrap ``runfolder.atomic_path`` (before the modules that import it are loaded)."""
    from geobuild.core import runfolder

    original = runfolder.atomic_path
    seen = 0

    @contextlib.contextmanager
    def atomic_path(final):
        nonlocal seen
        with original(final) as tmp:
            yield tmp
            if PurePath(final).match(pattern):
                seen += 1
                if seen == nth:
                    assert Path(tmp).exists(), f"no temporary output for {final}"
                    os.kill(os.getpid(), sig)

    runfolder.atomic_path = atomic_path


def run_killed(sig: signal.Signals, pattern: str, nth: int, args: list[str], env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``geobuild ARGS`` until the kill point; assert the signal (not the end of the work) ended it."""
    env = dict(os.environ if env is None else env, GEOBUILD_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), sig.name, pattern, str(nth), "--", *map(str, args)]
    # SIGINT as a terminal's foreground process gets it, even when the tests run where it is ignored
    # (a background job): an ignored SIGINT would be inherited and Python would install no handler
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # helpers it left (e.g. data-loader workers)
            os.killpg(proc.pid, signal.SIGKILL)
    want = -signal.SIGKILL if sig == signal.SIGKILL else 130
    assert proc.returncode == want, f"expected the {sig.name} kill point (exit {want}), got {proc.returncode}:\n{err[-3000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def main() -> None:
    sig, pattern, nth, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: killpoint.py SIGNAL PATTERN N -- GEOBUILD_ARGS..."
    install(signal.Signals[sig], pattern, int(nth))
    from geobuild.cli import main as geobuild_main

    sys.argv = ["geobuild", *args]
    try:
        geobuild_main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    sys.exit(f"the run ended before the kill point ({sig} after write {nth} of {pattern})")


if __name__ == "__main__":
    main()
