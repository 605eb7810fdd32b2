"""The pipeline's config (`reasonrank-jax demo`): the whole ReasonRank job in one YAML, embedded defaults = the demo.

Sections, each a stage: ``task`` (the synthetic task, reasonrank_jax.data.synthetic) or ``data`` (your own files),
``filter`` (self-consistency filter and the SFT/RL split), ``model`` (a checkpoint, or a tiny model from scratch),
``sft`` and ``grpo`` (training, each from a training YAML plus ``set`` overrides), ``rerank`` (sliding window over the
held-out first stage). ``seed`` seeds the task, the initial weights and both trainers, so one number names a
replicate. No jax import here.
"""

from __future__ import annotations

import dataclasses

from reasonrank_jax.config import ConfigCheckError, option, section

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TaskSection:
    """The synthetic task (reasonrank_jax.data.synthetic.SyntheticTask, its seed = the pipeline's ``seed``).

    The defaults are the demo's: one query word, one-unit passages (``apple``, ``no apple`` or another word), so that
    a tiny model learns the lookup in minutes; the teacher is negation-blind (``no apple`` counts as a match) and
    ranks tied matches in a random order, so the SFT model orders a tied decoy and relevant passage by chance; the
    reward is not blind, so GRPO can learn which one comes first."""

    num_queries: int = option(400, min=2, help="queries generated (train + held out)")
    heldout_fraction: float = option(0.1, min=0.0, max=1.0, help="share of queries held out for evaluation")
    passages_per_query: int = option(12, min=1, help="first-stage candidates per query (the rerank's top)")
    window: int = option(4, min=1, max=20, help="sliding window (training windows and the rerank)")
    step: int = option(2, min=1, help="window stride")
    num_topic_words: int = option(12, min=4, max=40, help="topic words in the vocabulary")
    query_words: tuple[int, ...] = option((1, 1), help="(low, high) words per query")
    passage_words: tuple[int, ...] = option((1, 1), help="(low, high) words per passage")
    num_relevant: tuple[int, ...] = option((1, 3), help="(low, high) relevant passages per query")
    num_decoys: tuple[int, ...] = option((1, 3), help="(low, high) decoys (negated mentions only) per query")
    p_more_words: float = option(0.0, min=0.0, max=1.0, help="chance of one more query word in a relevant passage")
    p_negated_extra: float = option(0.2, min=0.0, max=1.0)
    p_negated_other: float = option(0.0, min=0.0, max=1.0, help="chance of a 'no Y' of a non-query word")
    p_other_topic: float = option(0.6, min=0.0, max=1.0,
                                  help="chance a padding word is another topic word (else a filler word)")
    first_stage_noise: float = option(1.0, min=0.0, help="std of the first stage's noise")
    teacher_negation_blind: float = option(1.0, min=0.0, max=1.0,
                                           help="chance per window that the teacher counts 'no X' as a match")
    teacher_swap_prob: float = option(0.1, min=0.0, max=1.0)
    teacher_ties: str = option("random", choices=("window", "random"),
                               help="order of matched passages with equal counts: window order, or random")
    think_style: str = option("by_passage", choices=("by_passage", "by_word", "copy_match", "copy_topic_match"))

    def check(self) -> None:
        if self.step > self.window:
            raise ConfigCheckError("step", f"must be <= task.window ({self.window}), got {self.step}")
        for name in ("query_words", "passage_words", "num_relevant", "num_decoys"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ConfigCheckError(name, f"must be a [low, high] pair, got {list(value)}")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where the data comes from: the synthetic task (default) or your files (the paper's settings)."""

    source: str = option("synthetic", choices=("synthetic", "files"),
                         help="synthetic: generate the task; files: the paths below")
    raw: str | None = option(help="files: raw rows (training_data_all.jsonl) for the filter")
    raw_dir: str | None = option(help="files: directory with id_query/ and id_doc/ (default: the raw file's)")
    sft_heldout: str | None = option(help="files: Alpaca JSON whose loss SFT reports")
    run: str | None = option(help="files: first-stage TREC run of the evaluation queries")
    corpus: str | None = option(help="files: corpus of the run's passages")
    queries: str | None = option(help="files: queries of the run")
    qrels: str | None = option(help="files: TREC qrels of the evaluation queries")
    tfds: bool = option(True, help="build the SFT set as a TFDS array_record dataset and train from it")


@dataclasses.dataclass(frozen=True)
class FilterSection:
    alpha: float = option(0.4, min=0.0, max=1.0,
                          help="self-consistency threshold: keep a teacher window when its nDCG@10 >= alpha")
    sft_fraction: float = option(0.5, min=0.0, max=1.0, help="share of kept windows for SFT (the rest: RL)")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The starting model: ``path`` (a Hugging Face checkpoint with its tokenizer), or a Qwen2 built from scratch
    with the task's tokenizer and the sizes below (weights drawn from N(0, 0.02) with the pipeline's seed)."""

    path: str | None = option(help="a Hugging Face checkpoint directory (default: a tiny model from scratch)")
    hidden_size: int = option(64, min=8)
    intermediate_size: int = option(256, min=8)
    num_layers: int = option(2, min=1)
    num_heads: int = option(4, min=1)
    num_kv_heads: int = option(2, min=1)

    def check(self) -> None:
        if self.num_heads % self.num_kv_heads or self.hidden_size % self.num_heads:
            raise ConfigCheckError("num_heads", "num_heads must divide hidden_size and be a multiple of "
                                                "num_kv_heads")


@dataclasses.dataclass(frozen=True)
class SFTStage:
    enabled: bool = option(True, help="false: GRPO starts from the starting model (the 'w/o SFT' ablation)")
    config: str | None = option(help="training YAML (`train sft --config`; default: the demo's)")
    set: tuple[str, ...] = option((), help="section.key=value overrides of the training config")


@dataclasses.dataclass(frozen=True)
class GRPOStage:
    enabled: bool = option(True, help="false: no RL (the 'w/o RL' ablation)")
    config: str | None = option(help="training YAML (`train grpo --config`; default: the demo's)")
    set: tuple[str, ...] = option((), help="section.key=value overrides, e.g. grpo.reward=ndcg")


@dataclasses.dataclass(frozen=True)
class RerankSection:
    top: int | None = option(min=1, help="rerank the first-stage top-N (default: task.passages_per_query, or 100)")
    window: int | None = option(min=1, help="default: task.window (files: 20)")
    step: int | None = option(min=1, help="default: task.step (files: 10)")
    max_new_tokens: int = option(80, min=1, help="tokens per window answer")
    max_passage_length: int = option(32, min=1, help="tokens per passage")
    slots: int = option(16, min=1, help="sequences decoded together")
    dtype: str = option("float32", choices=DTYPES)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out: str = option("reasonrank-demo", metavar="DIR",
                      help="output directory (new, or an earlier demo's: finished stages are kept, the rest resumes)")
    seed: int = option(0, min=0, help="seeds the task, the initial weights and both trainers")
    task: TaskSection = section(TaskSection)
    data: DataSection = section(DataSection)
    filter: FilterSection = section(FilterSection)
    model: ModelSection = section(ModelSection)
    sft: SFTStage = section(SFTStage)
    grpo: GRPOStage = section(GRPOStage)
    rerank: RerankSection = section(RerankSection)

    def check(self) -> None:
        if self.data.source == "files":
            for name in ("raw", "run", "corpus", "queries", "qrels"):
                if not getattr(self.data, name):
                    raise ConfigCheckError(f"data.{name}", "is required with data.source=files")
            if not self.model.path:
                raise ConfigCheckError("model.path", "is required with data.source=files (a from-scratch model "
                                                     "needs the synthetic task's tokenizer)")
        if not (self.sft.enabled or self.grpo.enabled):
            raise ConfigCheckError("sft.enabled", "at least one of sft.enabled and grpo.enabled must be true")
