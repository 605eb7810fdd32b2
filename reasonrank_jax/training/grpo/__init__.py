"""GRPO (SPEC §5): group advantages and the dual-clip PPO loss with the k3 KL term (`loss`), rollouts on our own
decoder with the in-graph multi-view reward (`rollout`), the pure update step (`step`) and the training loop
(`run`, the `train grpo` command)."""

from reasonrank_jax.training.grpo.loss import group_advantages, grpo_loss, grpo_loss_sums

__all__ = ["group_advantages", "grpo_loss", "grpo_loss_sums"]
