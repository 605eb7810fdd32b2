"""SFT examples for the trainer: token ids and prompt lengths, from an Alpaca file or a built TFDS sft dataset.

Alpaca records (SPEC §6): `system` (optional), `instruction`, `output`; tokenized with the model's chat template
(`data.stream.tokenize_sft`: prompt = template with the generation prompt, response = what the template renders
after it). A malformed record is an input error naming the file and the record. Overlong examples follow
`overflow`: truncate (the response is cut), drop (counted), or error.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from reasonrank_jax.errors import InputError


def read_sft_examples(path: str, tokenizer, max_length: int, overflow: str = "truncate"
                      ) -> tuple[list[dict], Counter]:
    """([{"input_ids", "prompt_length"}], status counts)."""
    if os.path.isdir(path):
        return _from_built_dataset(path, max_length, overflow)
    from reasonrank_jax.data.stream import tokenize_sft
    from reasonrank_jax.inputs import iter_records

    examples, counts = [], Counter()
    for line, record in iter_records(path):
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str):
                raise InputError(f"expected a string {key!r} (Alpaca: system, instruction, output)", path=path,
                                 line=line, field=key)
        system = record.get("system") or ""
        if not isinstance(system, str):
            raise InputError("expected a string", path=path, line=line, field="system")
        ids, prompt_length, status = tokenize_sft(tokenizer, system, record["instruction"], record["output"],
                                                  max_length, "drop" if overflow == "error" else overflow)
        if ids is None and overflow == "error":
            raise InputError(f"does not fit data.max_length={max_length} ({status}, prompt {prompt_length} "
                             "tokens); raise data.max_length or set data.overflow to truncate or drop",
                             path=path, line=line, field="data.max_length")
        counts[status] += 1
        if ids is not None:
            examples.append({"input_ids": ids, "prompt_length": prompt_length})
    return examples, counts


def _from_built_dataset(version_dir: str, max_length: int, overflow: str) -> tuple[list[dict], Counter]:
    """A tokenized `data build sft` dataset (its train split); lengths were fixed when it was built."""
    from reasonrank_jax.data.builders import data_source

    source = data_source(version_dir, "train")
    examples, counts = [], Counter()
    for i in range(len(source)):
        record = source[i]
        if "input_ids" not in record:
            raise InputError("not a tokenized sft dataset (build it with --tokenizer)", path=version_dir)
        ids = np.asarray(record["input_ids"], np.int32)
        if len(ids) > max_length:
            if overflow == "error":
                raise InputError(f"record {i} has {len(ids)} tokens > data.max_length={max_length}",
                                 path=version_dir, field="data.max_length")
            if overflow == "drop":
                counts["dropped_too_long"] += 1
                continue
            ids, status = ids[:max_length], "truncated"
        else:
            status = "kept"
        counts[status] += 1
        examples.append({"input_ids": ids, "prompt_length": int(record["prompt_length"])})
    return examples, counts
