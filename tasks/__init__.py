"""One Lightning task module per job of the paper, all built on `BaseTask`."""
