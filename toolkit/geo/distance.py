"""Great-circle distance by the haversine formula (R = 6371 km), vectorised for numpy arrays and torch tensors."""

from __future__ import annotations

import numpy as np
import torch

EARTH_RADIUS_KM = 6371.0


def haversine_km(lat1, lon1, lat2, lon2):
    """Distance in km between points given in degrees; broadcasts; returns the input's array type."""
    if any(isinstance(a, torch.Tensor) for a in (lat1, lon1, lat2, lon2)):
        lat1, lon1, lat2, lon2 = (torch.deg2rad(torch.as_tensor(a, dtype=torch.float64)) for a in (lat1, lon1, lat2, lon2))
        h = torch.sin((lat2 - lat1) / 2) ** 2 + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2
        return 2 * EARTH_RADIUS_KM * torch.arcsin(torch.sqrt(h.clamp(0.0, 1.0)))
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
