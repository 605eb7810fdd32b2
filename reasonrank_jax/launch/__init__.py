"""Launching training and reranking on several hosts: TPU VM pods (`tpu_vm`), GKE through XPK (`xpk`) and N local
processes (`local`). Every launch runs the same `reasonrank-jax` command on every host, on JAX's own multi-host
runtime (`reasonrank_jax.distributed`). Set-up: README.md beside this file."""
