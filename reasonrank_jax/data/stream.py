"""Tokenized training examples and batches read by index as a pure function of (seed, epoch, step).

SFT example: ``input_ids`` = chat-template prompt tokens + response tokens; the loss mask covers
only the response (``prompt_length <= t < length``). RL example: the prompt tokens alone.

Batches: a permutation drawn from ``numpy.random.Generator(PCG64([seed, epoch]))`` fixes each
epoch's order, so a resumed run sees exactly the batches of an uninterrupted one, and process p
of P reads only its contiguous slice of every global batch. :class:`BatchPlan` adds length
bucketing: the permutation is cut into windows of ``bucket_window`` global batches, each window is
sorted by length and cut into batches, and the batch order is shuffled with the same generator;
a batch is padded to the smallest of a few bucket lengths, so few programs compile and little
is padding.
"""

from __future__ import annotations

import numpy as np

SFT_STATUSES = ("kept", "truncated", "dropped_too_long", "dropped_prompt_too_long")


def chat_prompt_text(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sft_response_text(tokenizer, messages: list[dict], output: str) -> str:
    """What the chat template renders after the generation prompt for this answer (ends with its EOS)."""
    prompt = chat_prompt_text(tokenizer, messages)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": output}], tokenize=False)
    if full.startswith(prompt):
        return full[len(prompt):]
    return output + (tokenizer.eos_token or "")  # a template that rewrites the answer: plain answer + EOS


def tokenize_sft(tokenizer, system: str, instruction: str, output: str, max_length: int,
                 overflow: str = "truncate") -> tuple[np.ndarray | None, int, str]:
    """(input_ids, prompt_length, status); status is one of SFT_STATUSES, ids None when dropped.

    ``overflow='truncate'`` cuts the response at ``max_length``; ``'drop'`` drops the example. An
    example whose prompt alone fills ``max_length`` is always dropped (no response token left).
    """
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', got {overflow!r}")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": instruction}]
    prompt_ids = _ids(tokenizer, chat_prompt_text(tokenizer, messages))
    response_ids = _ids(tokenizer, sft_response_text(tokenizer, messages, output))
    ids = np.asarray(prompt_ids + response_ids, dtype=np.int32)
    if len(prompt_ids) >= max_length:
        return None, len(prompt_ids), "dropped_prompt_too_long"
    if len(ids) <= max_length:
        return ids, len(prompt_ids), "kept"
    if overflow == "drop":
        return None, len(prompt_ids), "dropped_too_long"
    return ids[:max_length], len(prompt_ids), "truncated"


def tokenize_rl(tokenizer, messages: list[dict], max_prompt_length: int) -> tuple[np.ndarray | None, str]:
    """(prompt_ids, status); prompts longer than ``max_prompt_length`` are dropped (SPEC 5)."""
    ids = np.asarray(_ids(tokenizer, chat_prompt_text(tokenizer, messages)), dtype=np.int32)
    if len(ids) > max_prompt_length:
        return None, "dropped_prompt_too_long"
    return ids, "kept"


def loss_mask(prompt_length: int, length: int, padded_length: int) -> np.ndarray:
    """1 on response tokens (positions prompt_length..length-1), 0 on prompt and padding."""
    t = np.arange(padded_length)
    return ((t >= prompt_length) & (t < length)).astype(np.int32)


# ---- batches by index ----

def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([int(seed), int(epoch)]))


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Whole global batches per epoch (the remainder of the permutation is left out)."""
    return num_examples // global_batch


def _process_slice(batch: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    if len(batch) % process_count:
        raise ValueError(f"global batch {len(batch)} is not divisible by {process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    per = len(batch) // process_count
    return batch[process_index * per:(process_index + 1) * per]


def micro_batch_rows(batch: np.ndarray, accum: int, process_index: int, process_count: int) -> np.ndarray:
    """This process's rows of a global batch split into `accum` micro-batches: its share of every micro-batch, in
    order, so that micro-batch a holds the same rows on any number of processes (process p feeds the devices that
    hold rows [p * m / P, (p + 1) * m / P) of each micro-batch of m)."""
    micro_bm = np.asarray(batch).reshape(accum, -1)
    return _process_slice(micro_bm.T, process_index, process_count).T.reshape(-1)


def batch_indices(num_examples: int, global_batch: int, seed: int, epoch: int, step: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Example indices this process reads at (seed, epoch, step); step counts within the epoch."""
    n_steps = steps_per_epoch(num_examples, global_batch)
    if not 0 <= step < n_steps:
        raise IndexError(f"step {step} outside [0, {n_steps}) for {num_examples} examples, "
                         f"global batch {global_batch}")
    order = _epoch_rng(seed, epoch).permutation(num_examples)
    return _process_slice(order[step * global_batch:(step + 1) * global_batch], process_index, process_count)


def bucket_lengths(max_length: int, smallest: int = 256, growth: float = 1.15, multiple: int = 128) -> list[int]:
    """A few padded lengths, geometric from ``smallest`` to ``max_length`` (rounded to ``multiple``)."""
    out, length = [], float(smallest)
    while length < max_length:
        rounded = int(-(-length // multiple) * multiple)
        if not out or rounded > out[-1]:
            out.append(rounded)
        length *= growth
    return [b for b in out if b < max_length] + [max_length]


def padded_length(length: int, buckets: list[int]) -> int:
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


class BatchPlan:
    """Length-bucketed batches by index; the same (seed, epoch, step) always gives the same batch."""

    def __init__(self, lengths, global_batch: int, seed: int, buckets: list[int],
                 bucket_window: int = 64):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.global_batch, self.seed, self.buckets = global_batch, seed, list(buckets)
        self.bucket_window = bucket_window
        self._epoch, self._batches = None, None

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.lengths), self.global_batch)

    def _epoch_batches(self, epoch: int) -> np.ndarray:
        """[steps, global_batch] index matrix of one epoch (cached for the current epoch)."""
        if self._epoch != epoch:
            rng = _epoch_rng(self.seed, epoch)
            order = rng.permutation(len(self.lengths))[:self.steps_per_epoch * self.global_batch]
            window = self.global_batch * self.bucket_window
            chunks = []
            for start in range(0, len(order), window):
                chunk = order[start:start + window]
                chunks.append(chunk[np.argsort(-self.lengths[chunk], kind="stable")])
            batches = np.concatenate(chunks).reshape(self.steps_per_epoch, self.global_batch) \
                if chunks else np.zeros((0, self.global_batch), np.int64)
            self._epoch, self._batches = epoch, batches[rng.permutation(len(batches))]
        return self._batches

    def global_batch_indices(self, epoch: int, step: int) -> np.ndarray:
        batches = self._epoch_batches(epoch)
        if not 0 <= step < len(batches):
            raise IndexError(f"step {step} outside [0, {len(batches)})")
        return batches[step]

    def indices(self, epoch: int, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        return _process_slice(self.global_batch_indices(epoch, step), process_index, process_count)

    def padded_length(self, epoch: int, step: int) -> int:
        """The length every process pads this global batch to (same on all processes)."""
        return padded_length(int(self.lengths[self.global_batch_indices(epoch, step)].max()), self.buckets)

    def padding_fraction(self, epoch: int = 0) -> float:
        """Share of padded token slots over one epoch."""
        batches = self._epoch_batches(epoch)
        if not len(batches):
            return 0.0
        real = self.lengths[batches].sum()
        slots = sum(padded_length(int(self.lengths[b].max()), self.buckets) * len(b) for b in batches)
        return float(1.0 - real / slots)


def pad_rows(rows: list[np.ndarray], length: int, pad_id: int, side: str = "right") -> np.ndarray:
    """Stack 1-D int arrays into [batch, length]; ``side='left'`` for prompts that decoding extends."""
    out = np.full((len(rows), length), pad_id, dtype=np.int32)
    for i, row in enumerate(rows):
        row = np.asarray(row)[:length]
        if side == "right":
            out[i, :len(row)] = row
        else:
            out[i, length - len(row):] = row
    return out


def response_bucket(longest: int, length: int, smallest: int = 128) -> int:
    """The static response width R of a batch padded to ``length`` whose longest response (first to last loss
    token) has ``longest`` tokens: the smallest power of two >= max(longest, smallest), capped at ``length - 1``
    (the number of positions that predict a token). Powers of two keep the programs compiled per padded length
    few (about log2(length / smallest)); the head then runs on at most twice the longest response."""
    width = smallest
    while width < longest:
        width *= 2
    return max(min(width, length - 1), 1)


def response_window(loss_mask_bt: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(response_start, response_mask) of [..., seq] loss masks: per row, start = the index of the hidden state
    that predicts its first loss token (that token's position - 1; 0 for a row without one), and response_mask
    [..., width] = loss_mask[start + 1 : start + 1 + width] (0 past the row). ``width`` None: response_bucket of
    the longest span here; pass the same width to every micro-batch of a global batch (one compiled program)."""
    mask = np.asarray(loss_mask_bt)
    lead, t = mask.shape[:-1], mask.shape[-1]
    flat = mask.reshape(-1, t) != 0
    if flat[:, :1].any():
        raise ValueError("loss_mask is 1 at position 0, which no position predicts")
    has = flat.any(axis=1)
    first = np.where(has, flat.argmax(axis=1), 1)
    last = np.where(has, t - 1 - flat[:, ::-1].argmax(axis=1), 0)
    longest = int(np.maximum(last - first + 1, 0).max(initial=0))
    width = response_bucket(longest, t) if width is None else int(width)
    if longest > width:
        raise ValueError(f"a response spans {longest} positions, more than the window width {width}")
    positions = first[:, None] + np.arange(width)
    window = np.take_along_axis(flat, np.minimum(positions, t - 1), axis=1) & (positions < t)
    return ((first - 1).reshape(lead).astype(np.int32), window.reshape(*lead, width).astype(np.int32))


def sft_response_width(examples: list[dict], length: int) -> int:
    """response_bucket of the longest response among ``examples`` (pass a whole global batch, so that every
    process and micro-batch gets the same width)."""
    return response_bucket(max(len(e["input_ids"]) - int(e["prompt_length"]) for e in examples), length)


def sft_batch(examples: list[dict], length: int, pad_id: int, response_width: int | None = None
              ) -> dict[str, np.ndarray]:
    """input_ids_bt, loss_mask_bt (1 on response tokens) and attention_mask_bt for SFT records, and the response
    window of the loss (response_start_b, response_mask_br: see `response_window`; ``response_width`` None: the
    bucket of these examples' longest response)."""
    ids = [np.asarray(e["input_ids"]) for e in examples]
    mask_bt = np.stack([loss_mask(int(e["prompt_length"]), len(i), length) for e, i in zip(examples, ids)])
    start_b, window_br = response_window(mask_bt, response_width)
    return {"input_ids_bt": pad_rows(ids, length, pad_id), "loss_mask_bt": mask_bt,
            "attention_mask_bt": pad_rows([np.ones(len(i), np.int32) for i in ids], length, 0),
            "response_start_b": start_b, "response_mask_br": window_br}
