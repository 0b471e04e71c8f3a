"""msrun-style process launcher: scheduler + workers, HCCL rank tables, mpirun, failure handling.

It starts any script or module; it knows nothing about models. Entry points:
`mindrun launch`, `mindrun ranktable`, `python -m launcher`.
"""
