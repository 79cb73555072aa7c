"""--shards SPEC parsing shared by mine and distances."""

from __future__ import annotations

import pytest

from geobuild.core.errors import GeobuildError
from geobuild.core.shardspec import parse_shard_spec, select_units


@pytest.mark.parametrize(
    "spec, units",
    [
        ("{00000..00003}", ["00000", "00001", "00002", "00003"]),
        ("0-2", ["00000", "00001", "00002"]),
        ("3,5,8", ["00003", "00005", "00008"]),
        ("00007", ["00007"]),
        ("{00008..00009},1-2, 5 ,2", ["00001", "00002", "00005", "00008", "00009"]),
    ],
)
def test_parse(spec, units):
    assert parse_shard_spec(spec) == units


@pytest.mark.parametrize("spec", [None, "", "all", "ALL", "*"])
def test_all(spec):
    assert parse_shard_spec(spec) is None
    assert select_units(["00001", "00000"], spec) == ["00000", "00001"]


@pytest.mark.parametrize("spec", ["{5..2}", "a-b", "{00000..}", "1-", "x"])
def test_unreadable(spec):
    with pytest.raises(GeobuildError, match="--shards"):
        parse_shard_spec(spec)


def test_select_refuses_unknown_units():
    assert select_units(["00000", "00001", "00002"], "0,2") == ["00000", "00002"]
    with pytest.raises(GeobuildError, match="not available \\(00003\\)"):
        select_units(["00000", "00001", "00002"], "1-3")
