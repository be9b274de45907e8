"""LightningDataModules and datasets, one module per on-disk format; installed as `toolkit.data`."""

if __name__ != "toolkit.data":  # the repo root is on sys.path: `import data` would load every module twice
    raise ImportError(f"import toolkit.data, not {__name__}: the repo's data/ folder installs as toolkit.data")
