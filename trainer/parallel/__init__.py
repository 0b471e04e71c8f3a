"""Parallel training: the plan (checked layout), the process groups, the parallel train step."""
