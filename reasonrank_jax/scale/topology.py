"""TPU slices by name (`v5p-64`, `v6e-256`, ...): chips, hosts, the 2-D / 3-D chip grid the TPU compiler needs to
describe the slice without one, and each generation's per-chip figures.

Naming (Cloud TPU accelerator types): for v4 and v5p the number counts TensorCores, two per chip, one JAX device
per chip (megacore): v5p-64 is 32 chips. For v5e and v6e it counts chips: v6e-256 is 256 chips. Multi-host slices
have 4 chips per host; v5e-8 / v6e-8 and smaller are one host.
"""

from __future__ import annotations

import dataclasses
import re

from reasonrank_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str                 # as in accelerator types: v4, v5e, v5p, v6e
    topology_prefix: str      # libtpu's topology names: "v5:2x2x2"
    chip_config: str          # libtpu's chip configuration: megacore = one device per chip
    cores_per_chip: int       # what the accelerator type's number counts per chip
    dims: int                 # chip grid: 3-D torus (v4, v5p) or 2-D (v5e, v6e)
    hbm_gib: float            # per chip, usable by XLA programs (the TPU compiler's "available HBM")
    peak_bf16_flops: float    # per chip, dense bf16 (Cloud TPU documentation)
    hbm_bytes_per_s: float    # per chip (Cloud TPU documentation)
    device_kind: str          # jax's device_kind
    max_chips: int            # the largest slice


GENERATIONS = {
    "v4": Generation("v4", "v4", "megacore", 2, 3, 30.75, 275e12, 1228e9, "TPU v4", 4096),
    "v5p": Generation("v5p", "v5", "megacore", 2, 3, 95.74, 459e12, 2765e9, "TPU v5", 6144),
    "v5e": Generation("v5e", "v5e", "default", 1, 2, 15.75, 197e12, 819e9, "TPU v5 lite", 256),
    "v6e": Generation("v6e", "v6e", "default", 1, 2, 31.25, 918e12, 1640e9, "TPU v6 lite", 256),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}
CHIPS_PER_HOST = 4
_NAME = re.compile(r"^(v4|v5p|v5e|v6e|v5litepod|v5lite|v6lite)-(\d+)$")


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    name: str                 # as given: "v5p-64"
    generation: Generation
    chips: int
    grid: tuple[int, ...]     # chips along each axis of the slice's grid

    @property
    def hosts(self) -> int:
        return max(1, self.chips // CHIPS_PER_HOST) if self.chips > 8 or self.generation.dims == 3 else 1

    @property
    def chips_per_host(self) -> int:
        return self.chips // self.hosts

    @property
    def topology_name(self) -> str:
        return f"{self.generation.topology_prefix}:{'x'.join(map(str, self.grid))}"

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        """The chip grid one host holds (libtpu's chips_per_host_bounds)."""
        if self.hosts == 1:
            return (*self.grid, 1)[:3] if len(self.grid) == 2 else self.grid
        return (2, 2, 1)

    @property
    def hbm_bytes(self) -> float:
        return self.generation.hbm_gib * 2**30


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The slice's grid as Cloud TPU lays it out: powers of two, the smallest axis doubled first (v5p-64: 2x4x4,
    v6e-256: 16x16, v4-8: 2x2x1)."""
    grid = [1] * dims if dims == 2 else [2, 2, 1]
    start = 1 if dims == 2 else 4
    if chips < start or chips & (chips - 1):
        return ()
    n = start
    while n < chips:
        smallest = min(grid)
        i = max(j for j, g in enumerate(grid) if g == smallest)
        grid[i] *= 2
        n *= 2
    if dims == 3 and chips >= 8:
        grid.sort()
    return tuple(grid)


def parse_slice(name: str, field: str = "--topology") -> TpuSlice:
    """`v5p-64`, `v6e-256`, `v5e-16` (or `v5litepod-16`), `v4-32` -> TpuSlice."""
    match = _NAME.match(name.strip().lower())
    if not match:
        raise InputError(f"unknown TPU slice {name!r}: expected GENERATION-SIZE with GENERATION one of "
                         f"{', '.join(GENERATIONS)} (e.g. v5p-64, v6e-256, v5e-16, v4-32)", field=field)
    generation = GENERATIONS[_ALIASES.get(match.group(1), match.group(1))]
    size = int(match.group(2))
    chips, rest = divmod(size, generation.cores_per_chip)
    grid = chip_grid(chips, generation.dims) if not rest and chips <= generation.max_chips and chips != 2 else ()
    if not grid:
        most = generation.max_chips * generation.cores_per_chip
        what = f"TensorCores (2 per chip; 8, 16, 32, ... {most})" if generation.cores_per_chip == 2 else \
            f"chips (1, 4, 8, 16, ... {most})"
        raise InputError(f"{name}: {generation.name} slices are named by their {what}; got {size}", field=field)
    return TpuSlice(name=name, generation=generation, chips=chips, grid=grid)
