"""Small stages for testing the pipeline machinery and executors (not collected as tests)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from geobuild.core.ledger import reject
from geobuild.core.runfolder import atomic_path
from geobuild.core.stage import Stage, UnitResult


@dataclass
class MakeStage(Stage):
    """Makes ``n`` units of ``size`` samples; sample i of a unit is rejected when i % reject_every == 0."""

    n: int = 4
    size: int = 5
    reject_every: int = 5
    salt: str = "a"
    name = "make"

    def units(self, run):
        return [f"{i:05d}" for i in range(self.n)]

    def config(self):
        return {"n": self.n, "size": self.size, "reject_every": self.reject_every, "salt": self.salt}

    def process(self, run, unit):
        kept, ledger = [], []
        for i in range(self.size):
            key = f"{unit}-{i}"
            if self.reject_every and i % self.reject_every == 0:
                ledger.append(reject(key, key, "too_small", "toy reject"))
            else:
                kept.append(f"{key}:{self.salt}")
        with atomic_path(run.path("make", f"{unit}.txt")) as tmp:
            tmp.write_text("\n".join(kept) + "\n")
        return UnitResult(stats={"samples_in": self.size, "samples_out": len(kept)}, ledger=ledger)


@dataclass
class UpperStage(Stage):
    """One unit per finished ``make`` unit: upper-cases its lines; fails on units in ``fail``.

    ``fail`` is a comma list of units that always fail, or, as ``UNIT:N``, fail their first N
    attempts only. With ``flag_dir`` every attempt of a unit appends a line to
    ``flag_dir/attempts-<unit>`` (see :func:`attempts`; ``UNIT:N`` needs it); units in
    ``kill_once`` kill their own worker process on their first attempt (needs ``flag_dir``)."""

    fail: str = ""
    kill_once: str = ""
    flag_dir: str = ""
    name = "upper"

    def units(self, run):
        return run.done_units("make")

    def config(self):
        return {}

    def process(self, run, unit):
        attempt = record_attempt(self.flag_dir, unit) if self.flag_dir else 0
        for entry in filter(None, self.fail.split(",")):
            name, _, first_n = entry.partition(":")
            if name == unit and (not first_n or attempt <= int(first_n)):
                raise RuntimeError(f"toy failure in {unit}" + (f" (attempt {attempt} of the first {first_n})" if first_n else ""))
        if unit in self.kill_once.split(",") and self.flag_dir:
            flag = Path(self.flag_dir) / f"killed-{unit}"
            if not flag.exists():
                flag.parent.mkdir(parents=True, exist_ok=True)
                flag.write_text(str(os.getpid()))
                with atomic_path(run.path("upper", f"{unit}.txt")) as tmp:  # killed half-way
                    tmp.write_text("partial")
                    os.kill(os.getpid(), signal.SIGKILL)
        lines = run.path("make", f"{unit}.txt").read_text().split()
        with atomic_path(run.path("upper", f"{unit}.txt")) as tmp:
            tmp.write_text("\n".join(x.upper() for x in lines) + "\n")
        return UnitResult(stats={"samples_in": len(lines), "samples_out": len(lines)})


def record_attempt(flag_dir: str, unit: str) -> int:
    """Append one line to ``flag_dir/attempts-<unit>``; return this attempt's number (1 = first)."""
    path = Path(flag_dir) / f"attempts-{unit}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return len(path.read_text().splitlines())


def attempts(flag_dir, unit: str) -> int:
    """How many attempts of ``unit`` :func:`record_attempt` recorded."""
    path = Path(flag_dir) / f"attempts-{unit}"
    return len(path.read_text().splitlines()) if path.exists() else 0


@dataclass
class SecretStage(Stage):
    """One unit per finished ``make`` unit; uses a token and an API key (writes their sha256 prefix)."""

    token: str = ""
    api_key: str = ""
    name = "secret"

    def units(self, run):
        return run.done_units("make")

    def config(self):
        return {"token": self.token, "api_key": self.api_key}

    def process(self, run, unit):
        import hashlib

        seen = hashlib.sha256(f"{self.token}|{self.api_key}".encode()).hexdigest()[:16]
        with atomic_path(run.path("secret", f"{unit}.txt")) as tmp:
            tmp.write_text(seen + "\n")
        return UnitResult(stats={"samples_in": 1, "samples_out": 1})
