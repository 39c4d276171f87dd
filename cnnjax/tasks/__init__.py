"""Tasks: loss + metrics + post-processing for each problem, as pure jittable steps."""
