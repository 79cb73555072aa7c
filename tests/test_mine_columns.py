"""The gallery's columns as codes in mining: exact string equality with queries, nulls never equal,
location text filled in as it is geocoded; and a CPU-only search process that never imports torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from geobuild.artifacts.gallery import _gpu_driver
from geobuild.cli import app
from geobuild.core.runfolder import RunFolder
from geobuild.stages.mine.columns import ABSENT, NULL, Codes, TextCodes
from geobuild.stages.mine.image_candidates import exclusion_mask

from _fixtures_index import write_embeddings


def test_codes_compare_exactly_and_nulls_never_match():
    col = pa.chunked_array([["a/1", None, "b"], ["", "a/1", "B"]], pa.string())
    c = Codes.of(col)
    assert c.codes.dtype == np.int32 and c.codes.flags.writeable
    assert c.codes[1] == NULL and c.codes[0] == c.codes[4] and len({*c.codes.tolist()}) == 5
    q = c.lookup(["a/1", "b", "B", "", "a/2", "a/1 "])
    assert q[:4].tolist() == [c.codes[0], c.codes[2], c.codes[5], c.codes[3]]
    assert q[4] == q[5] == ABSENT
    assert c.take(np.array([4, 1, 3, 5])).tolist() == ["a/1", None, "", "B"]
    assert c.take(np.zeros(0, np.int64)).tolist() == []


def test_exclusion_by_codes_is_the_exclusion_by_strings():
    rng = np.random.default_rng(0)
    authors = np.array(["", "x", "y", "z", "x y"], dtype=object)[rng.integers(0, 5, 200)]
    ids = np.array([f"id{i % 150}" for i in range(200)], dtype=object)  # repeated ids too
    rows = rng.integers(-1, 200, size=(30, 12))
    scores = rng.random((30, 12)).astype(np.float32)
    q_ids, q_auth = ids[rng.integers(0, 200, 30)], authors[rng.integers(0, 200, 30)]
    q_ids[:3] = ["id999", "", "id1"]
    g_id, g_auth = Codes.of(pa.array(list(ids))), Codes.of(pa.array(list(authors)))
    qa = np.where(q_auth != "", g_auth.lookup(q_auth), ABSENT)
    got = exclusion_mask(rows, scores, g_id.codes, g_id.codes, g_auth.codes, g_id.lookup(q_ids), g_id.lookup(q_ids),
                         qa, True, 0.9)
    safe = np.where(rows < 0, 0, rows)
    self_hit = (ids[safe] == q_ids[:, None]) & (rows >= 0)
    same = (authors[safe] == q_auth[:, None]) & (q_auth != "")[:, None] & ~self_hit & (rows >= 0)
    assert np.array_equal(got["self"], self_hit) and got["self"].any()
    assert np.array_equal(got["same_author"], same) and same.any()
    assert np.array_equal(got["near_duplicate"], (scores >= 0.9) & ~self_hit & ~same & (rows >= 0))


def test_text_codes_fill_in_geocoded_text():
    t = TextCodes.of(pa.chunked_array([["Paris", None], ["", "Lyon", "Paris"]]), 5)
    assert t.has_text().tolist() == [True, False, False, True, True]
    assert t.get(np.array([0, 1, 3, 4])).tolist() == ["Paris", "", "Lyon", "Paris"]
    t.set(np.array([1, 2]), ["Nice", "Paris"])
    assert t.get(np.arange(5)).tolist() == ["Paris", "Nice", "Paris", "Lyon", "Paris"]
    assert len(t.vocab) == 4  # '', Paris, Lyon, Nice: a value is stored once
    none = TextCodes.of(None, 3)
    assert none.get(np.arange(3)).tolist() == ["", "", ""] and not none.has_text().any()


@pytest.mark.skipif(_gpu_driver(), reason="a GPU driver is present: torch may rightly be imported")
def test_a_cpu_only_search_process_does_not_import_torch(tmp_path):
    run = RunFolder(tmp_path / "run")
    write_embeddings(run, [120, 80], dim=16)
    res = CliRunner().invoke(app, ["index", "--run", str(run.root), "--gps-gallery", "none", "--kind", "flat"])
    assert res.exit_code == 0, res.output
    code = ("import sys; from geobuild.artifacts.gallery import load_gallery; "
            f"g = load_gallery({str(run.root)!r}, device='auto'); g.search(g.index.reconstruct_n(0, 3), 2); "
            "print(g.backend, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["faiss-cpu", "False"]
