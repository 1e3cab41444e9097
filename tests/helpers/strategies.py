"""Hypothesis strategies for configuration values, edge cases included (NaN, infinities, -0.0)."""
from hypothesis import strategies as st


budget_lists = st.lists(st.one_of(st.floats(-0.5, 1.5), st.just(float("nan"))), max_size=4)


edge_floats = st.one_of(st.floats(-2, 2), st.sampled_from([0.0, 1.0, -0.0, float("nan"), float("inf"), -float("inf")]))
