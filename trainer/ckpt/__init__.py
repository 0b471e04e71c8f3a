"""Sharded checkpoints: one safetensors file per model-parallel rank, a manifest, a commit protocol.

    <run>/checkpoints/step_<N>/shard-mp<r>-of-<m>.safetensors   rank r's slices of the split
                                                               parameters and their Adam moments
                                                               (r = 0 also the replicated ones)
    <run>/checkpoints/step_<N>/manifest.json                   layout, checksums, position, config
    <run>/checkpoints/latest, last -> step_<N>                 the newest complete checkpoint
    <run>/checkpoints/best -> step_<M>                         the best by train.best_metric

    layout.py    which tensors a rank holds and how they are split (ShardLayout)
    manifest.py  the manifest: build, read, verify (sizes and SHA-256 of every file)
    store.py     CheckpointStore: the commit protocol, pointers, keep-K, resume, resharding load
    tools.py     `mindrun ckpt inspect | merge | reshard`, and full weights for inference

Data-parallel replicas are written once (data-parallel rank 0 of each model-parallel rank
writes). Loading reads tensors by name and slice with safetensors: nothing is unpickled or
executed. A checkpoint saved under one layout loads under any other (the manifest records
the axis along which the layout splits each tensor).
"""
