"""Which tensors of the training state a rank holds, and how the layout splits them."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

MOMENT_PREFIXES = ("moment1.", "moment2.")  # nn.Adam's moments are named after their parameter


def base_name(name: str) -> str:
    """The parameter a tensor of the state belongs to (an Adam moment's parameter, else itself)."""
    for prefix in MOMENT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def chunk(length: int, parts: int, index: int) -> Tuple[int, int]:
    """[start, stop) of part `index` of `parts` equal contiguous parts of `length`."""
    if length % parts:
        raise ValueError(f"a length of {length} does not split into {parts} equal parts")
    n = length // parts
    return index * n, (index + 1) * n


@dataclass(frozen=True)
class ShardLayout:
    """This rank's place in the layout, and the axis along which the layout splits each parameter.

    `split_axes` is the model's layout table (model/parallel/layout.py split_axes) whatever the
    model-parallel size; with mp_size 1 nothing is split, but the manifest still records it.
    """

    mp_rank: int = 0
    mp_size: int = 1
    dp_rank: int = 0
    dp_size: int = 1
    split_axes: Dict[str, int] = field(default_factory=dict)

    def axis(self, name: str) -> Optional[int]:
        """The axis along which the layout splits tensor `name` (moments follow their parameter)."""
        return self.split_axes.get(base_name(name))

    def is_split(self, name: str) -> bool:
        return self.mp_size > 1 and self.axis(name) is not None

    @property
    def writes(self) -> bool:
        """Whether this rank writes a shard: data-parallel rank 0 of each model-parallel rank."""
        return self.dp_rank == 0

    def owns(self, name: str) -> bool:
        """Whether this rank's shard holds `name`: its slice if split, else model-parallel rank 0 holds it."""
        return self.is_split(name) or self.mp_rank == 0

    def file_name(self, mp_rank: Optional[int] = None) -> str:
        r = self.mp_rank if mp_rank is None else mp_rank
        return f"shard-mp{r:02d}-of-{self.mp_size:02d}.safetensors"

    def piece_file(self, mp_rank: Optional[int] = None, dp_rank: Optional[int] = None) -> str:
        """The file of one rank's pieces of a sharded optimizer's flat moments (parallel.optimizer_shard)."""
        r = self.mp_rank if mp_rank is None else mp_rank
        d = self.dp_rank if dp_rank is None else dp_rank
        return f"zero-mp{r:02d}-dp{d:02d}-of-{self.mp_size:02d}x{self.dp_size:02d}.safetensors"

    def flat_parts(self, name: str, global_shape: Sequence[int], tensor: str, offset: int, size: int,
                   local_shape: Sequence[int], piece: int) -> List[Dict]:
        """The manifest's parts of a tensor kept in a sharded optimizer's flat vector: per model-parallel rank
        (with its [start, stop) along the split axis when split), elements [offset, offset + size) of that
        rank's flat `tensor`, whose data-parallel rank d holds [d * piece, (d + 1) * piece) in its piece file."""
        ranks = range(self.mp_size) if self.is_split(name) else range(1)
        parts = []
        for r in ranks:
            pieces = [{"file": self.piece_file(r, d), "start": d * piece, "stop": (d + 1) * piece}
                      for d in range(self.dp_size) if d * piece < offset + size and offset < (d + 1) * piece]
            part = {"flat": {"tensor": tensor, "offset": offset, "size": size, "shape": list(local_shape),
                             "pieces": pieces}}
            if self.is_split(name):
                part.update(zip(("start", "stop"), chunk(global_shape[self.axis(name)], self.mp_size, r)))
            parts.append(part)
        return parts

    def global_shape(self, name: str, local_shape: Sequence[int]) -> List[int]:
        """The full shape of a tensor this rank holds `local_shape` of."""
        shape = list(local_shape)
        if self.is_split(name):
            shape[self.axis(name)] *= self.mp_size
        return shape

    def parts(self, name: str, global_shape: Sequence[int]) -> List[Dict]:
        """The manifest's parts of tensor `name` under this layout: one file and [start, stop) along
        the split axis per model-parallel rank, or the whole tensor in rank 0's file."""
        if not self.is_split(name):
            return [{"file": self.file_name(0)}]
        length = global_shape[self.axis(name)]
        return [{"file": self.file_name(r), **dict(zip(("start", "stop"), chunk(length, self.mp_size, r)))}
                for r in range(self.mp_size)]

    def local_range(self, name: str, global_shape: Sequence[int]) -> Optional[Tuple[int, int]]:
        """[start, stop) along the split axis that this rank holds, or None when it holds all of it."""
        if not self.is_split(name):
            return None
        return chunk(global_shape[self.axis(name)], self.mp_size, self.mp_rank)
