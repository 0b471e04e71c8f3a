"""Process launcher (msrun-style workers, rank tables, mpirun); see the launcher issue.

Not built yet: `mindrun launch` does not exist until that issue lands.
"""
