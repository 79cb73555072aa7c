"""``geobuild export``: write a run's candidates in other tools' layouts (``export georanker``)."""

from __future__ import annotations

from typing import Optional

import typer

export_app = typer.Typer(help="Export a run's candidates in other tools' layouts.", no_args_is_help=True)


@export_app.command("georanker")
def georanker(
    run: str = typer.Option(..., "--run", help="Run folder with candidates/ (geobuild mine)."),
    out: str = typer.Option(..., "--out", "-o", help="A .parquet file (all shards), or a folder (one georanking-<shard>.parquet per shard)."),
    shards: Optional[str] = typer.Option(None, "--shards", help="Shards to export: '{00000..00009}', '0-9', '3,5,8' or 'all' (default)."),
    group_size: int = typer.Option(7, "--group-size", min=1, help="Entries 1..N form the group GeoRanker ranks."),
    group_negatives: int = typer.Option(2, "--group-negatives", min=0, help="Distance-band negatives placed at the end of each group."),
    tail: int = typer.Option(5, "--tail", min=0, help="Entries after the group, read as negative examples."),
) -> None:
    """GeoRanking Parquet (img_id, gps, ref_gps, ref_img_id, ref_texts) from candidates/*.parquet."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from ..core.errors import GeobuildError
    from ..artifacts.georanking import GeorankerOptions, candidates_to_georanking
    from ..core.ledger import write_ledger
    from ..core.runfolder import RunFolder, atomic_path
    from ..core.schemas import arrow_schema
    from ..core.shardspec import select_units
    from ..artifacts.candidates import read_candidates

    rf = RunFolder(run)
    have = rf.done_units("mine")
    if not have:
        raise GeobuildError(f"no mined shards in {rf.root}; run: geobuild mine --run {rf.root}")
    units = select_units(have, shards, "mined shards")
    opts = GeorankerOptions(group_size=group_size, group_negatives=group_negatives, tail=tail)
    target = Path(out).expanduser()
    single = target.suffix == ".parquet"
    rows = 0
    dropped: list[dict] = []
    if single:
        with atomic_path(target) as tmp:
            with pq.ParquetWriter(tmp, arrow_schema("georanking")) as writer:
                for u in units:
                    conv = candidates_to_georanking(read_candidates(rf, u), opts)
                    writer.write_table(conv.table)
                    rows += conv.table.num_rows
                    dropped += conv.dropped
    else:
        if target.exists() and not target.is_dir():
            raise GeobuildError(
                f"--out {target} is an existing file, not a folder; pass a .parquet file name (all shards in one file) "
                f"or a folder (one georanking-<shard>.parquet per shard), e.g. rerun with --out {target.with_suffix('.parquet')}"
            )
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GeobuildError(f"cannot create the --out folder {target} ({exc}); pass another --out") from None
        for u in units:
            conv = candidates_to_georanking(read_candidates(rf, u), opts)
            with atomic_path(target / f"georanking-{u}.parquet") as tmp:
                pq.write_table(conv.table, tmp)
            rows += conv.table.num_rows
            dropped += conv.dropped
    ledger = target.parent / f"{target.name}.ledger.parquet"
    if dropped:  # one row per query left out, with its reason: nothing is dropped silently
        write_ledger(ledger, dropped)
    else:
        ledger.unlink(missing_ok=True)
    typer.echo(
        f"export georanker: {rows} rows from {len(units)} shards to {target}"
        + (f"; {len(dropped)} queries left out (fewer than {group_size + tail} candidates), listed in {ledger}"
           if dropped else ""),
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
