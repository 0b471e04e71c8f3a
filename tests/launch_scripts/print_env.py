"""Print the launcher-relevant environment as one JSON line (no MindSpore import)."""
import json
import os

KEYS = ("MS_", "RANK_", "DEVICE_ID", "HCCL_", "MINDRUN_", "ASCEND_", "OMPI_", "PMIX_", "PMI_")
print("ENV " + json.dumps({k: v for k, v in sorted(os.environ.items()) if k.startswith(KEYS)}
                          | {"_cwd": os.getcwd(), "_cpus": sorted(os.sched_getaffinity(0))}), flush=True)
