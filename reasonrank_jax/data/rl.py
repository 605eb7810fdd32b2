"""RL prompts for GRPO: token ids plus what the reward needs, from an RL file or a built TFDS rl dataset.

RL rows (SPEC §6): ``prompt`` (chat messages, a list of {role, content} or a JSON string of one), ``label`` (the
teacher's ranking, ``[3] > [1] > [2]``), ``initial_list`` (the window's passage ids), ``relevant_docids``; optional
``final_list``, ``dataset``, ``qid``. Any record file of :mod:`reasonrank_jax.inputs` holds them (the parquet of
the original, or JSON lines). Prompts are rendered with the model's chat template and the generation prompt; those
over ``max_prompt`` tokens are dropped and counted (SPEC §5: longer prompts are filtered out).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np

from reasonrank_jax.errors import InputError

REQUIRED = ("prompt", "label", "initial_list", "relevant_docids")
MAX_WINDOW = 20


def _messages(value, path, line) -> list[dict]:
    try:
        if isinstance(value, str):
            value = json.loads(value)
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    except (TypeError, KeyError, ValueError):
        raise InputError("expected chat messages (a list of {role, content})", path=path, line=line,
                         field="prompt") from None
    if not messages:
        raise InputError("empty chat messages", path=path, line=line, field="prompt")
    return messages


def _ids(value, path, line, field) -> list[str]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, (str, int)) for x in value):
        raise InputError("expected a list of ids", path=path, line=line, field=field)
    return [str(x) for x in value]


def rl_example(record: dict, path: str, line: int | None) -> dict:
    """One checked RL row (without tokens)."""
    for key in REQUIRED:
        if record.get(key) is None:
            raise InputError("missing field (an RL row has prompt, label, initial_list, relevant_docids)",
                             path=path, line=line, field=key)
    if not isinstance(record["label"], str):
        raise InputError("expected a ranking string like '[3] > [1] > [2]'", path=path, line=line, field="label")
    initial_list = _ids(record["initial_list"], path, line, "initial_list")
    if not 1 <= len(initial_list) <= MAX_WINDOW:
        raise InputError(f"a window holds 1..{MAX_WINDOW} passages, got {len(initial_list)}", path=path, line=line,
                         field="initial_list")
    labelled = [t for t in "".join(c if c.isdigit() else " " for c in record["label"]).split()]
    if len(labelled) > MAX_WINDOW:
        raise InputError(f"ranks {len(labelled)} ids, more than a window's {MAX_WINDOW}", path=path, line=line,
                         field="label")
    return {"prompt": _messages(record["prompt"], path, line), "label": record["label"],
            "initial_list": initial_list,
            "relevant_docids": _ids(record["relevant_docids"], path, line, "relevant_docids"),
            "dataset": str(record.get("dataset") or ""), "qid": str(record.get("qid") or "")}


def read_rl_examples(path: str, tokenizer, max_prompt: int) -> tuple[list[dict], Counter]:
    """([{"prompt_ids", "label", "initial_list", "relevant_docids", "dataset", "qid"}], status counts)."""
    if os.path.isdir(path):
        return _from_built_dataset(path, tokenizer, max_prompt)
    from reasonrank_jax.data.stream import tokenize_rl
    from reasonrank_jax.inputs import iter_records

    examples, counts = [], Counter()
    for line, record in iter_records(path):
        example = rl_example(record, path, line)
        ids, status = tokenize_rl(tokenizer, example.pop("prompt"), max_prompt)
        counts[status] += 1
        if ids is not None:
            examples.append({"prompt_ids": ids, **example})
    return examples, counts


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _from_built_dataset(version_dir: str, tokenizer, max_prompt: int) -> tuple[list[dict], Counter]:
    """A `data build rl` dataset (its train split); tokenized here unless it was built with --tokenizer."""
    from reasonrank_jax.data.builders import data_source
    from reasonrank_jax.data.stream import tokenize_rl

    source = data_source(version_dir, "train")
    examples, counts = [], Counter()
    for i in range(len(source)):
        record = source[i]
        if "label" not in record or "initial_list" not in record:
            raise InputError("not an rl dataset (no label / initial_list)", path=version_dir)
        if "prompt_ids" in record:
            ids = np.asarray(record["prompt_ids"], np.int32)
            status = "kept" if len(ids) <= max_prompt else "dropped_prompt_too_long"
            ids = ids if status == "kept" else None
        else:
            prompt = record["prompt"]
            messages = [{"role": _text(r), "content": _text(c)} for r, c in zip(prompt["role"], prompt["content"])]
            ids, status = tokenize_rl(tokenizer, messages, max_prompt)
        counts[status] += 1
        if ids is not None:
            examples.append({"prompt_ids": ids, "label": _text(record["label"]),
                             "initial_list": [_text(x) for x in record["initial_list"]],
                             "relevant_docids": [_text(x) for x in record["relevant_docids"]],
                             "dataset": _text(record.get("dataset", "")), "qid": _text(record.get("qid", ""))})
    return examples, counts
