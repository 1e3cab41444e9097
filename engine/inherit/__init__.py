"""The inheritance method under test: growth of rung d into d+1 (growth), the Fisher (fisher), the elastic
penalty (penalty), ARS damping (ars), and what a grown rung starts from (inheritance)."""
