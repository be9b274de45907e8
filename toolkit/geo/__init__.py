"""Geolocation helpers: S2-cell partitioning (PlaNet), great-circle distances and the Im2GPS metrics."""
