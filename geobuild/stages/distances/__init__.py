"""The distances stage: Candidates -> query-to-candidate and candidate-by-candidate geodesic km."""

from .stage import DistancesConfig, DistancesStage

__all__ = ["DistancesConfig", "DistancesStage"]
