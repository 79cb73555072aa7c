"""geobuild: build geolocalization training datasets (GeoRanking-style) reproducibly."""

__version__ = "0.1.0"
