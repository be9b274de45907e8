"""One Lightning task module per job of the paper, all built on `BaseTask`; installed as `toolkit.tasks`."""

if __name__ != "toolkit.tasks":  # the repo root is on sys.path: `import tasks` would load every module twice
    raise ImportError(f"import toolkit.tasks, not {__name__}: the repo's tasks/ folder installs as toolkit.tasks")
