"""`reasonrank-jax plan`: compile a training step for a TPU topology from this host (work in progress)."""

from __future__ import annotations

import dataclasses

from reasonrank_jax.config import option


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    TRAINING_CONFIG = True

    topology: str | None = option(required=True, metavar="TPU", help="TPU slice, e.g. v5p-64, v6e-256, v5e-16, "
                                                                      "v4-32")
    config: str | None = option(flag=False)
    overrides: tuple[str, ...] = option((), flag=False)


CONFIG = PlanConfig


def main(config: PlanConfig) -> int:
    raise NotImplementedError
