"""LightningDataModules and datasets, one module per on-disk format."""
