"""A Swapper's counters (swapper_stats) as a frozen dataclass."""

import dataclasses

from ._lib import STATS_FIELDS


@dataclasses.dataclass(frozen=True)
class Stats:
    """A Swapper's bookkeeping (swapper_stats)."""

    params: int
    pending_reads: int
    pending_writes: int
    inflight_params: int
    inflight_numel: int
    available_params: int
    available_numel: int
    free_buffers: int
    reserved_buffers: int
    total_buffers: int
    bytes_read: int
    bytes_written: int
    read_wait_ns: int
    write_wait_ns: int

    def as_dict(self):
        return dataclasses.asdict(self)


assert tuple(f.name for f in dataclasses.fields(Stats)) == STATS_FIELDS
