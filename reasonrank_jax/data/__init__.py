"""Training data: the raw ReasonRank set, SFT/RL records, TFDS array_record builders (no TensorFlow),
the self-consistency filter, index-based batches and teacher synthesis.

The TFDS builders live in :mod:`reasonrank_jax.data.builders` (imported on use: it loads
tensorflow_datasets, which never imports TensorFlow for array_record data sources).
"""

from reasonrank_jax.data.convert import filter_raw, ranking_label, raw_to_rl, raw_to_sft, sft_response
from reasonrank_jax.data.filter import (DEFAULT_ALPHA, final_list_run, self_consistency_scores, split_of,
                                        stage_of)
from reasonrank_jax.data.records import RawTexts, Report, read_raw_rows
from reasonrank_jax.data.stream import (BatchPlan, batch_indices, bucket_lengths, loss_mask, pad_rows,
                                        sft_batch, steps_per_epoch, tokenize_rl, tokenize_sft)

__all__ = ["BatchPlan", "DEFAULT_ALPHA", "RawTexts", "Report", "batch_indices", "bucket_lengths",
           "filter_raw", "final_list_run", "loss_mask", "pad_rows", "ranking_label", "raw_to_rl", "raw_to_sft",
           "read_raw_rows", "self_consistency_scores", "sft_batch", "sft_response", "split_of", "stage_of",
           "steps_per_epoch", "tokenize_rl", "tokenize_sft"]
