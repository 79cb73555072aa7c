"""Geometry on the Earth: the sphere (haversine), the WGS-84 ellipsoid (geodesic), spatial
look-ups and reverse geocoding."""
