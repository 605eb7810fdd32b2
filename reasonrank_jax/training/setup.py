"""From a training config to a placed train state: the model, the optimizer, the adapters, the step spec, and what a
checkpoint holds. Shared by the trainer (start and resume) and by export."""

from __future__ import annotations

import dataclasses

import jax

from reasonrank_jax.training.sections import SFTConfig


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

    def metadata(self, config: SFTConfig) -> dict:
        lora = config.lora
        return {"model_path": config.model.path,
                "lora": {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)}
                if self.use_lora else None}


def prepare(config: SFTConfig, mesh, total_steps: int) -> Prepared:
    from reasonrank_jax.models import load_pretrained
    from reasonrank_jax.models.lora import init_lora, lora_scale
    from reasonrank_jax.training.optim import make_optimizer
    from reasonrank_jax.training.sft import StepSpec
    from reasonrank_jax.training.state import init_state, state_shardings

    model, optim, lora_cfg = config.model, config.optim, config.lora
    cfg, params = load_pretrained(model.path, dtype=model.param_dtype, mesh=mesh)
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
