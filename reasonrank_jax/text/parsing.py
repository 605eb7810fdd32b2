"""Reading a window's ranking out of the model's output (SPEC §2, inference semantics)."""

from __future__ import annotations

import re

_THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>", re.DOTALL)
_NON_DIGIT = re.compile(r"\D")


def parse_permutation_with_status(output_text: str, num: int) -> tuple[list[int], bool]:
    """(0-based permutation of range(num), parsed_ok). parsed_ok is False when no usable id was found, in which
    case the permutation is the identity (the window keeps its order)."""
    text = output_text.lower()
    match = _THINK_ANSWER.search(text)
    if match:
        body = match.group(1)
    elif "<answer>" in text:
        body = text.rsplit("<answer>", 1)[1]
    else:
        body = text
    ranked: list[int] = []
    seen: set[int] = set()
    for token in _NON_DIGIT.sub(" ", body).split():
        index = int(token) - 1
        if 0 <= index < num and index not in seen:  # duplicates keep their first place; out-of-window ids drop
            seen.add(index)
            ranked.append(index)
    return ranked + [i for i in range(num) if i not in seen], bool(ranked)


def parse_permutation(output_text: str, num: int) -> list[int]:
    """0-based permutation of range(num): the ids the output ranks, then the missing ones in window order."""
    return parse_permutation_with_status(output_text, num)[0]


def apply_permutation(candidates: list, perm: list[int]) -> list:
    """candidates reordered by perm: new position j holds candidates[perm[j]].

    Scores stay attached to positions (as in the original): reorder the docids with this and keep the list of
    scores as it was, so position j keeps the score it had.
    """
    if sorted(perm) != list(range(len(candidates))):
        raise ValueError(f"not a permutation of range({len(candidates)}): {perm}")
    return [candidates[i] for i in perm]


def format_ranking(ids_1based) -> str:
    """[3, 1, 2] -> '[3] > [1] > [2]'."""
    return " > ".join(f"[{int(i)}]" for i in ids_1based)
