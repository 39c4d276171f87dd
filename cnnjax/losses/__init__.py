"""Losses: pure functions (predictions, targets) -> (scalar, aux dict)."""
