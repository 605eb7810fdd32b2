"""Training (SFT full and LoRA, GRPO, checkpoints) lands in the next issues.

Sharding rules and the mesh live in `reasonrank_jax.sharding`.
"""
