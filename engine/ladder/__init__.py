"""The miniseries: its arms and recipes, the rung directories, and the order rungs are trained and grown in (run)."""
