"""Config sections of the training commands: `train sft` (model, data, train, optim, lora, mesh) and `train grpo`
(the same model, lora and mesh; its own data, train and optim defaults; and grpo). Set in YAML as nested mappings or on the command line as `section.key=value`. No jax import here."""

from __future__ import annotations

import dataclasses

from reasonrank_jax.config import ConfigCheckError, OneOf, option, section

DTYPES = ("float32", "bfloat16")
REMAT = ("none", "full", "dots", "dots_no_batch")
LORA_TARGET_NAMES = ("q", "k", "v", "o", "gate", "up", "down")  # reasonrank_jax.models.lora.LORA_TARGETS


@dataclasses.dataclass(frozen=True)
class ModelSection:
    path: str | None = option(required=True, help="the starting model: a Hugging Face checkpoint directory, or a "
                                                   "`train` run directory (its latest checkpoint, LoRA merged)")
    tokenizer: str | None = option(help="tokenizer directory (default: model.path)")
    dtype: str = option("float32", choices=DTYPES, help="compute dtype")
    param_dtype: str = option("float32", choices=DTYPES, help="dtype of the weights the optimizer updates")
    remat: str = option("none", choices=REMAT, help="rematerialisation policy of the decoder layers")


@dataclasses.dataclass(frozen=True)
class DataSection:
    path: str | None = option(required=True, help="Alpaca JSON file (system, instruction, output) or a built, "
                                                   "tokenized TFDS sft dataset version directory")
    heldout: str | None = option(help="Alpaca JSON file whose loss is reported (train.eval_every, and at the end)")
    max_length: int = option(23552, min=2, help="max prompt + response tokens")
    overflow: str = option("truncate", choices=("truncate", "drop", "error"),
                           help="longer examples: cut the response, drop them (counted), or stop with an error")
    smallest_bucket: int = option(256, min=8, help="smallest padded length (buckets grow by 15%)")


@dataclasses.dataclass(frozen=True)
class TrainSection:
    out: str | None = option(required=True, help="run directory: config.yaml, metrics.jsonl, checkpoints/, "
                                                  "tensorboard/; rerun the same command to resume")
    steps: int | None = option(min=1, help="optimizer steps")
    epochs: int | None = option(min=1, help="epochs (instead of steps)")
    global_batch: int = option(64, min=1, help="examples per optimizer step")
    micro_batch: int = option(8, min=1, help="examples per forward pass over the whole mesh")
    seed: int = option(0, min=0, help="data order and adapter init")
    save_every: int = option(0, min=0, help="checkpoint every N steps (0: at the end of every epoch)")
    keep: int = option(3, min=1, help="checkpoints kept")
    eval_every: int = option(0, min=0, help="held-out loss every N steps (0: at the end only)")
    logits_chunk: int = option(1024, min=1, help="positions per chunk of the output projection in the loss")

    ONE_OF = (OneOf(("steps", "epochs")),)

    def check(self) -> None:
        if self.global_batch % self.micro_batch:
            raise ConfigCheckError("micro_batch", f"must divide train.global_batch ({self.global_batch}), "
                                                  f"got {self.micro_batch}")


@dataclasses.dataclass(frozen=True)
class OptimSection:
    lr: float = option(5e-6, min=0.0, help="peak learning rate")
    schedule: str = option("cosine", choices=("cosine", "constant"), help="after the warmup")
    warmup_ratio: float = option(0.1, min=0.0, max=1.0, help="share of the steps spent warming up linearly")
    weight_decay: float = option(0.0, min=0.0)
    clip_norm: float = option(1.0, min=0.0, help="global gradient norm clip (0: off)")
    b1: float = option(0.9, min=0.0, max=1.0)
    b2: float = option(0.999, min=0.0, max=1.0)
    eps: float = option(1e-8, min=0.0)


@dataclasses.dataclass(frozen=True)
class LoraSection:
    rank: int = option(0, min=0, help="adapter rank (0: full fine-tuning)")
    alpha: float = option(32.0, min=0.0, help="scale alpha / rank")
    targets: tuple[str, ...] = option(LORA_TARGET_NAMES, choices=LORA_TARGET_NAMES, help="adapted projections")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = option(1, min=-1, help="data-parallel axis size (-1: the remaining devices)")
    fsdp: int = option(-1, min=-1, help="fully sharded data-parallel axis size (-1: the remaining devices)")
    tensor: int = option(1, min=-1, help="tensor-parallel axis size (-1: the remaining devices)")

    def check(self) -> None:
        sizes = (self.data, self.fsdp, self.tensor)
        if 0 in sizes:
            raise ConfigCheckError(("data", "fsdp", "tensor")[sizes.index(0)], "must be >= 1 or -1")
        if sizes.count(-1) > 1:
            raise ConfigCheckError("fsdp", "at most one mesh axis may be -1")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data, self.fsdp, self.tensor


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    model: ModelSection = section(ModelSection)
    data: DataSection = section(DataSection)
    train: TrainSection = section(TrainSection)
    optim: OptimSection = section(OptimSection)
    lora: LoraSection = section(LoraSection)
    mesh: MeshSection = section(MeshSection)


@dataclasses.dataclass(frozen=True)
class RLDataSection:
    path: str | None = option(required=True, help="RL rows (SPEC §6: prompt, label, initial_list, relevant_docids; "
                                                   "parquet or JSON lines) or a built TFDS rl dataset directory")
    heldout: str | None = option(help="RL rows answered greedily every train.eval_every steps and at the end "
                                      "(heldout_reward, heldout_ndcg, heldout_valid_rate)")


@dataclasses.dataclass(frozen=True)
class GRPOTrainSection:
    out: str | None = option(required=True, help="run directory: config.yaml, metrics.jsonl, checkpoints/, "
                                                  "tensorboard/; rerun the same command to resume")
    steps: int | None = option(min=1, help="GRPO steps (each: rollouts, then grpo.prompts_per_step / "
                                           "grpo.mini_batch updates)")
    epochs: int | None = option(min=1, help="passes over the prompts (instead of steps)")
    micro_batch: int = option(8, min=1, help="sequences (prompt + rollout) per forward pass over the whole mesh")
    seed: int = option(0, min=0, help="prompt order, rollout sampling (keyed by seed and step), adapter init")
    save_every: int = option(25, min=1, help="checkpoint every N steps (and at the end)")
    keep: int = option(3, min=1, help="checkpoints kept")
    eval_every: int = option(0, min=0, help="held-out rewards every N steps (0: at the end only)")
    logits_chunk: int = option(1024, min=1, help="positions per chunk of the output projection in the log-probs")

    ONE_OF = (OneOf(("steps", "epochs")),)


@dataclasses.dataclass(frozen=True)
class GRPOOptimSection(OptimSection):
    lr: float = option(1e-6, min=0.0, help="peak learning rate (SPEC §5: 1e-6 full, 1e-5 LoRA)")
    schedule: str = option("constant", choices=("cosine", "constant"), help="after the warmup")
    warmup_ratio: float = option(0.0, min=0.0, max=1.0, help="share of the steps spent warming up linearly")


@dataclasses.dataclass(frozen=True)
class GRPOSection:
    prompts_per_step: int = option(16, min=1, help="prompts sampled per step")
    rollouts: int = option(8, min=1, help="rollouts per prompt (a group)")
    mini_batch: int = option(8, min=1, help="prompts per update (prompts_per_step / mini_batch updates a step)")
    clip: float = option(0.2, min=0.0, max=1.0, help="PPO ratio clip epsilon")
    clip_c: float = option(3.0, min=1.0, help="dual-clip bound c for negative advantages")
    kl_coef: float = option(0.001, min=0.0, help="coefficient of the k3 KL loss to the reference")
    temperature: float = option(1.0, min=1e-3, help="rollout sampling temperature (top_p 1)")
    max_prompt: int = option(20480, min=1, help="prompts over this many tokens are filtered out (counted)")
    max_response: int = option(3072, min=1, help="max new tokens per rollout")
    reward: str = option("multiview", choices=("multiview", "ndcg"),
                         help="nDCG@10 + 0.2 Recall@10 + 0.1 RBO, or nDCG@10 alone (the ablation)")

    def check(self) -> None:
        if self.prompts_per_step % self.mini_batch:
            raise ConfigCheckError("mini_batch", f"must divide grpo.prompts_per_step ({self.prompts_per_step}), "
                                                 f"got {self.mini_batch}")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    model: ModelSection = section(ModelSection)
    data: RLDataSection = section(RLDataSection)
    train: GRPOTrainSection = section(GRPOTrainSection)
    optim: GRPOOptimSection = section(GRPOOptimSection)
    lora: LoraSection = section(LoraSection)
    mesh: MeshSection = section(MeshSection)
    grpo: GRPOSection = section(GRPOSection)

    def check(self) -> None:
        rows = self.grpo.mini_batch * self.grpo.rollouts
        if rows % self.train.micro_batch:
            raise ConfigCheckError("train.micro_batch", f"must divide the sequences of an update (grpo.mini_batch x "
                                                        f"grpo.rollouts = {rows}), got {self.train.micro_batch}")


TRAINERS = {"sft": SFTConfig, "grpo": GRPOConfig}


def trainer_of(mapping: dict, written: str | None = None) -> str:
    """Which trainer a training YAML is for: the command a resolved config names, else 'grpo' when it has a grpo
    section, else 'sft'."""
    if written in ("train sft", "train grpo"):
        return written.split()[1]
    return "grpo" if "grpo" in mapping else "sft"


def load_training_config(path: str | None, overrides: tuple[str, ...] = (), trainer: str | None = None,
                         field: str = "--config"):
    """(trainer, SFTConfig | GRPOConfig) from a training YAML and section.key=VALUE overrides, checked as `train`
    checks them; used by the commands that plan or launch a training run."""
    from reasonrank_jax.config import Source, Values, parse_override, read_yaml_mapping, written_by
    from reasonrank_jax.errors import InputError

    if not path:
        raise InputError("a training config is required (the YAML given to `train sft|grpo --config`)", field=field)
    mapping = read_yaml_mapping(path)
    with open(path, encoding="utf-8") as f:
        trainer = trainer or trainer_of(mapping, written_by(f.read(4096)))
    values = Values(TRAINERS[trainer])
    values.set_mapping(mapping, path)
    for text in overrides:
        key, value = parse_override(text)
        values.set(key, value, Source(None, text))
    return trainer, values.build(path)
