"""From a training config to a placed train state: the model, the optimizer, the adapters, the step spec, and what a
checkpoint holds. Shared by the trainer (start and resume) and by export."""

from __future__ import annotations

import dataclasses
import os

import jax

from reasonrank_jax.errors import InputError
from reasonrank_jax.training.sections import GRPOConfig, SFTConfig

RUN_CONFIGS = {"train sft": SFTConfig, "train grpo": GRPOConfig}  # what wrote a run directory's config.yaml


@dataclasses.dataclass
class Prepared:
    spec: object            # training.sft.StepSpec
    state: object           # TrainState, placed on the mesh
    abstract: object        # its shapes
    shardings: object       # its NamedShardings
    use_lora: bool

    def saved(self, state) -> dict:
        """What a checkpoint holds: under LoRA the adapters, not the frozen base (reloaded from model.path)."""
        trained = {"lora": state.lora} if self.use_lora else {"params": state.params}
        return {"step": state.step, **trained, "opt_state": state.opt_state, "rng": state.rng}

    def abstract_saved(self):
        from reasonrank_jax.training.checkpoint import abstract_like

        return abstract_like(self.saved(self.abstract), self.saved(self.shardings))

    def metadata(self, config: SFTConfig | GRPOConfig) -> dict:
        lora = config.lora
        return {"model_path": config.model.path,
                "lora": {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)}
                if self.use_lora else None}


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.yaml")) and not os.path.isfile(os.path.join(path, "config.json"))


def read_run_config(run_dir: str):
    """The resolved config (SFTConfig or GRPOConfig) a run directory was trained with."""
    from reasonrank_jax.config import Values, read_yaml_mapping, written_by

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise InputError("not a training run directory (no config.yaml)", path=run_dir)
    with open(path, encoding="utf-8") as f:
        command = written_by(f.read(4096))
    if command not in RUN_CONFIGS:
        raise InputError(f"was not written by 'reasonrank-jax {' or '.join(RUN_CONFIGS)}'", path=path)
    values = Values(RUN_CONFIGS[command])
    values.set_mapping(read_yaml_mapping(path), path)
    return values.build(path)


def tokenizer_dir(model) -> str:
    """Where the tokenizer of a ModelSection lives: model.tokenizer, else the starting model's (through run
    directories)."""
    if model.tokenizer:
        return model.tokenizer
    return tokenizer_dir(read_run_config(model.path).model) if is_run_dir(model.path) else model.path


def load_start_model(path: str, dtype: str, mesh, step: int | None = None):
    """(cfg, params) of a starting model: a Hugging Face directory, or a run directory's checkpoint (the latest
    complete one unless `step`; LoRA adapters merged into the base), placed on the mesh in `dtype`."""
    from reasonrank_jax.models import load_pretrained

    if not is_run_dir(path):
        return load_pretrained(path, dtype=dtype, mesh=mesh)
    import jax.numpy as jnp

    from reasonrank_jax.models.lora import merge_lora
    prepared, state, _ = restore_run(path, mesh, step)
    params = merge_lora(state.params, state.lora, prepared.spec.lora_scale) if prepared.use_lora else state.params
    params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
    return dataclasses.replace(prepared.spec.cfg, param_dtype=dtype, dtype=dtype), params


def restore_run(run_dir: str, mesh, step: int | None = None):
    """(prepared, state, step): a run directory's train state at `step` (default: the latest complete one)."""
    from reasonrank_jax.training.checkpoint import Checkpointer

    config = read_run_config(run_dir)
    checkpoints = os.path.join(run_dir, "checkpoints")
    checkpointer = Checkpointer(checkpoints, keep=None)
    steps = checkpointer.steps()
    step = steps[-1] if steps and step is None else step
    if step is None or step not in steps:
        checkpointer.close()
        raise InputError(f"no complete checkpoint of step {step}; complete: {steps or 'none'}", path=checkpoints,
                         field="--step")
    prepared = prepare(config, mesh, total_steps=1)
    state = restore(prepared, checkpointer, step)
    checkpointer.close()
    return prepared, state, step


def prepare(config: SFTConfig | GRPOConfig, mesh, total_steps: int) -> Prepared:
    from reasonrank_jax.models.lora import init_lora, lora_scale
    from reasonrank_jax.training.optim import make_optimizer
    from reasonrank_jax.training.sft import StepSpec
    from reasonrank_jax.training.state import init_state, state_shardings

    model, optim, lora_cfg = config.model, config.optim, config.lora
    cfg, params = load_start_model(model.path, model.param_dtype, mesh)
    cfg = dataclasses.replace(cfg, dtype=model.dtype, remat_policy=model.remat)
    optimizer, schedule = make_optimizer(optim.lr, total_steps, schedule=optim.schedule,
                                         warmup_ratio=optim.warmup_ratio, weight_decay=optim.weight_decay,
                                         clip_norm=optim.clip_norm, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    use_lora = lora_cfg.rank > 0
    rng = jax.random.PRNGKey(config.train.seed)
    lora = init_lora(params, lora_cfg.rank, lora_cfg.targets, jax.random.fold_in(rng, 1)) if use_lora else {}
    spec = StepSpec(cfg=cfg, optimizer=optimizer, schedule=schedule,
                    lora_scale=lora_scale(lora_cfg.alpha, lora_cfg.rank) if use_lora else None,
                    logits_chunk=config.train.logits_chunk)
    abstract = jax.eval_shape(lambda: init_state(params, lora, optimizer, rng))
    shardings = state_shardings(mesh, abstract, optimizer)
    state = jax.jit(lambda p, a: init_state(p, a, optimizer, rng), out_shardings=shardings)(params, lora)
    return Prepared(spec=spec, state=state, abstract=abstract, shardings=shardings, use_lora=use_lora)


def restore(prepared: Prepared, checkpointer, step: int):
    """The prepared state with what the checkpoint of `step` holds."""
    restored = checkpointer.restore(step, prepared.abstract_saved())
    return prepared.state.replace(**restored)
