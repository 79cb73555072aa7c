"""Evaluation protocols: which candidates a figure ranks, how its errors are measured and counted.

``groups`` (geobuild's own): the checkpoint's group rule, the dataset's distances, and only the
queries that form a full group are counted.

``georanker`` (GeoRanker's ``evaluate.py --topn 12 --topn_zs 3``): the first 12 retrieval (image)
candidates and the first 3 GPS candidates of each query, errors in WGS-84 geodesic km, correct when
strictly below 1 / 25 / 200 / 750 / 2500 km, and every query in the denominator: a query that
could not be evaluated (no candidate, no valid location, no photo, not mined) counts as wrong.
A query with fewer candidates is ranked over the ones it has.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import GeobuildError


@dataclass(frozen=True)
class Protocol:
    name: str
    quota: tuple[tuple[str, int], ...] = ()  # candidates per source, in order; empty: the checkpoint's groups
    distance: str = "dataset"  # dataset | haversine | geodesic
    strict: bool = True  # correct when the error is < threshold (else <=)
    all_queries: bool = False  # every query in the denominator, one not evaluated counted as wrong

    def describe(self) -> str:
        cands = " + ".join(f"first {n} {'retrieval' if s == 'image' else s.upper()}" for s, n in self.quota) or "the checkpoint's groups"
        dist = {"dataset": "the dataset's km", "haversine": "haversine km", "geodesic": "geodesic km (WGS-84)"}[self.distance]
        count = "all queries counted (not evaluated = wrong)" if self.all_queries else "queries with a full group counted"
        return f"{self.name}: {cands}, {dist}, errors {'<' if self.strict else '<='} threshold, {count}"

    def record(self) -> dict:
        return {
            "name": self.name,
            "description": self.describe(),
            "candidates": {s: n for s, n in self.quota} or "checkpoint groups",
            "distance": self.distance,
            "comparison": "<" if self.strict else "<=",
            "denominator": "all queries" if self.all_queries else "evaluated groups",
        }


GEORANKER = Protocol("georanker", quota=(("image", 12), ("gps", 3)), distance="geodesic", strict=True, all_queries=True)
PROTOCOLS = {"groups": Protocol("groups"), "georanker": GEORANKER}


def get_protocol(name: str, le: bool = False) -> Protocol:
    """The protocol ``name``; ``le`` (count errors <= threshold) only applies to ``groups``."""
    if name not in PROTOCOLS:
        raise GeobuildError(f"unknown evaluation protocol '{name}'; choose one of: {', '.join(PROTOCOLS)}")
    proto = PROTOCOLS[name]
    if le:
        if proto.name != "groups":
            raise GeobuildError(f"--le cannot change the '{name}' protocol (it counts errors strictly below); use --protocol groups")
        proto = Protocol(proto.name, proto.quota, proto.distance, strict=False, all_queries=proto.all_queries)
    return proto
