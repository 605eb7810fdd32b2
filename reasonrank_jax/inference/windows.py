"""The sliding-window schedule of SPEC §2: which [start, end) ranges of a candidate list are reranked, in order."""

from __future__ import annotations


def sliding_windows(rank_start: int, rank_end: int, window: int, step: int) -> list[tuple[int, int]]:
    """Windows [start, end) in processing order, back to front, by the original's loop rule (SPEC §2).

    (0, 100, 20, 10) -> [(80, 100), (70, 90), ..., (0, 20)]: 9 windows. The start is clamped to rank_start in
    place (so the next start is computed from the clamped value), and the loop stops when end <= rank_start or
    start + step == rank_start, exactly as the original does; a list shorter than `window` must therefore be called
    with window = its length (see `make_query_state`).
    """
    if window < 1 or step < 1:
        raise ValueError(f"window and step must be >= 1, got {window}, {step}")
    windows = []
    end, start = rank_end, rank_end - window
    while end > rank_start and start + step != rank_start:
        start = max(start, rank_start)
        windows.append((start, end))
        end, start = end - step, start - step
    return windows
