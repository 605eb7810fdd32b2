"""Training data: the raw ReasonRank set, SFT/RL records, TFDS array_record builders (no TensorFlow),
the self-consistency filter, index-based batches and teacher synthesis.

The TFDS builders live in :mod:`reasonrank_jax.data.builders` (imported on use: it loads
tensorflow_datasets, which never imports TensorFlow for array_record data sources).

Names are imported on first use (PEP 562), so that importing a command module stays light.
"""

from reasonrank_jax.lazy import lazy_getattr

_EXPORTS = {
    "filter_raw": "reasonrank_jax.data.convert",
    "ranking_label": "reasonrank_jax.data.convert",
    "raw_to_rl": "reasonrank_jax.data.convert",
    "raw_to_sft": "reasonrank_jax.data.convert",
    "sft_response": "reasonrank_jax.data.convert",
    "DEFAULT_ALPHA": "reasonrank_jax.data.filter",
    "final_list_run": "reasonrank_jax.data.filter",
    "self_consistency_scores": "reasonrank_jax.data.filter",
    "split_of": "reasonrank_jax.data.filter",
    "stage_of": "reasonrank_jax.data.filter",
    "RawTexts": "reasonrank_jax.data.records",
    "Report": "reasonrank_jax.data.records",
    "read_raw_rows": "reasonrank_jax.data.records",
    "BatchPlan": "reasonrank_jax.data.stream",
    "batch_indices": "reasonrank_jax.data.stream",
    "bucket_lengths": "reasonrank_jax.data.stream",
    "loss_mask": "reasonrank_jax.data.stream",
    "pad_rows": "reasonrank_jax.data.stream",
    "sft_batch": "reasonrank_jax.data.stream",
    "steps_per_epoch": "reasonrank_jax.data.stream",
    "tokenize_rl": "reasonrank_jax.data.stream",
    "tokenize_sft": "reasonrank_jax.data.stream",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
