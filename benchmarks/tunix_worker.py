"""Tunix side of `bench_sft.py`: runs in Tunix's own virtualenv (google-tunix 0.1.7), never imports reasonrank_jax.

    TUNIX_VENV/bin/python benchmarks/tunix_worker.py --model-dir DIR --batches batches.npz [--lr ..]

Loads the Hugging Face checkpoint in DIR with Tunix's `models/{qwen2,qwen3}/params.create_model_from_safe_tensors`
(float32, a 1 x 1 ("fsdp", "tp") mesh on the single CPU device), builds a `PeftTrainer` (full fine-tuning, its
default loss: the masked token-mean cross-entropy over `input_mask`, here the response mask) with AdamW behind a
global-norm clip, and takes the trainer's own jitted step (`jit_train_and_eval_step`, what `PeftTrainer.train`
calls each step). Then it obeys commands on stdin, one per line, and answers JSON lines on stdout:

    run N   -> N lines {"step": i, "seconds": t, "loss": l, "others": c} (each step blocked on its loss; c: cores
               kept busy by other processes meanwhile), then {"done": N}
    quit    -> exits

The first line it prints is {"ready": true, "compile_s": ..., "first_loss": ...}: the first step (batch 0, fresh
weights) is the warm-up, so compilation stays outside every timing. Batches cycle through the .npz arrays
input_ids [n, b, t], loss_mask [n, b, t] (all positions are real tokens: no padding).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _strip_device_count_flag() -> None:
    flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, this process's CPU s, the whole machine's busy CPU s incl. steal) for `others_cores`."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError):
        busy = float("nan")
    times = os.times()
    return time.perf_counter(), times.user + times.system, busy


def others_cores(start: tuple[float, float, float], end: tuple[float, float, float]) -> float:
    """Cores kept busy by other processes (and the hypervisor's steal) between two snapshots: the contention a
    step saw. NaN where /proc/stat is unavailable."""
    wall = end[0] - start[0]
    return max(0.0, ((end[2] - start[2]) - (end[1] - start[1])) / wall) if wall > 0 else float("nan")


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def tunix_config(model_type: str, hf: dict):
    """Tunix's ModelConfig from a Hugging Face config.json."""
    if model_type == "qwen2":
        from tunix.models.qwen2 import model as model_lib
    elif model_type == "qwen3":
        from tunix.models.qwen3 import model as model_lib
    else:
        raise SystemExit(f"tunix worker: model type {model_type!r} not supported (qwen2, qwen3)")
    import jax.numpy as jnp

    heads = hf["num_attention_heads"]
    return model_lib.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        num_kv_heads=hf.get("num_key_value_heads", heads),
        rope_theta=int(hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000)),
        norm_eps=hf["rms_norm_eps"], use_tied_embedding=bool(hf.get("tie_word_embeddings", False)),
        dtype=jnp.float32, param_dtype=jnp.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--batches", required=True, help=".npz with input_ids and loss_mask, [n, batch, seq]")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip-norm", type=float, default=1.0)
    args = parser.parse_args()
    _strip_device_count_flag()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import numpy as np
    import optax
    from jax.sharding import AxisType
    from tunix.sft import peft_trainer, sharding_utils
    from tunix.sft import utils as sft_utils

    with open(os.path.join(args.model_dir, "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    model_type = hf["model_type"]
    config = tunix_config(model_type, hf)
    if model_type == "qwen2":
        from tunix.models.qwen2 import params as params_lib
    else:
        from tunix.models.qwen3 import params as params_lib

    data = np.load(args.batches)
    input_ids, loss_mask = data["input_ids"], data["loss_mask"]

    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)
    with mesh:
        model = params_lib.create_model_from_safe_tensors(args.model_dir, config, mesh, dtype=jax.numpy.float32)
        optimizer = optax.chain(*([optax.clip_by_global_norm(args.clip_norm)] if args.clip_norm > 0 else []),
                                optax.adamw(args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=args.weight_decay))
        training_config = peft_trainer.TrainingConfig(eval_every_n_steps=10**9, max_steps=10**9)
        trainer = peft_trainer.PeftTrainer(model, optimizer, training_config)

        def gen_model_input(x: peft_trainer.TrainingInput):
            valid = x.input_tokens >= 0  # every position is a real token (no padding in these batches)
            return {"input_tokens": x.input_tokens, "input_mask": x.input_mask,
                    "positions": sft_utils.build_positions_from_mask(valid),
                    "attention_mask": sft_utils.make_causal_attn_mask(valid)}

        trainer = trainer.with_gen_model_input_fn(gen_model_input)
        train_step, _ = trainer.jit_train_and_eval_step(cache_nnx_graph=True)
        examples = [sharding_utils.shard_input(
            peft_trainer.TrainingInput(input_tokens=input_ids[i].astype(np.int32),
                                       input_mask=loss_mask[i].astype(np.int32)),
            training_config.data_sharding_axis) for i in range(len(input_ids))]

        start = time.perf_counter()
        loss, _, _ = train_step(examples[0])
        first_loss = float(loss)
        emit({"ready": True, "compile_s": time.perf_counter() - start, "first_loss": first_loss,
              "jax": jax.__version__, "devices": len(jax.devices()),
              "params": int(sum(x.size for x in jax.tree.leaves(
                  __import__("flax").nnx.state(model, __import__("flax").nnx.Param))))})
        cursor = 1
        for line in sys.stdin:
            command = line.split()
            if not command:
                continue
            if command[0] == "quit":
                break
            if command[0] != "run":
                emit({"error": f"unknown command {line.strip()!r}"})
                continue
            n = int(command[1])
            for i in range(n):
                example = examples[cursor % len(examples)]
                cursor += 1
                before = cpu_snapshot()
                loss, _, _ = train_step(example)
                loss = float(loss)  # blocks until the step is done
                after = cpu_snapshot()
                emit({"step": i, "seconds": after[0] - before[0], "loss": loss, "others": others_cores(before, after)})
            emit({"done": n})


if __name__ == "__main__":
    main()
