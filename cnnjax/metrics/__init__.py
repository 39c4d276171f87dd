"""Exact metric accumulators: sums and counts, never averages of averages."""
