"""The ``geobuild`` command line (Typer). Each subcommand lives in ``geobuild/commands/<name>.py``
and exposes ``register(app)``; heavy dependencies are imported inside the commands."""

from __future__ import annotations

import importlib
import sys

import typer

from .core.errors import GeobuildError

app = typer.Typer(
    name="geobuild",
    help="Build GeoRanking-style geolocalization datasets: shard, embed, index, mine, distances, publish, train-ranker, eval, run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

INTERRUPTED = "interrupted; rerun the same command to resume"
COMMAND_MODULES = ("shard", "embed", "index", "mine", "distances", "export", "publish", "train_ranker", "eval", "run", "report", "verify")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from .core.log import setup_logging

    setup_logging(verbose)


@app.command()
def version() -> None:
    """Print the geobuild version."""
    from . import __version__

    typer.echo(__version__)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"geobuild.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"geobuild.commands.{name}":
                continue
            raise
        module.register(app)


_register_commands()


def main() -> None:
    """Console entry point: a GeobuildError (or an uncaught OSError) ends with one line on stderr
    and exit status 2."""
    try:
        app()
    except SystemExit as exc:
        if exc.code == 130:  # Typer turns Ctrl-C (KeyboardInterrupt) into a silent exit 130
            typer.echo(INTERRUPTED, err=True)
        raise
    except GeobuildError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a file-system problem the code did not turn into a GeobuildError
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
