"""msrun-style process launcher: scheduler + workers, HCCL rank tables, mpirun, failure handling, preflight.

It starts any script or module; it knows nothing about models (it imports neither trainer/ nor model/).
Entry points: `mindrun launch`, `mindrun ranktable`, `mindrun doctor` (dispatched through
`launcher.cli.SUBCOMMANDS`), and `python -m launcher`. `launcher.atomic` is the project's atomic write.
"""
