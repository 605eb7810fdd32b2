"""`reasonrank-jax train sft|grpo --config FILE.yaml [section.key=value ...]`: cold-start SFT (full or LoRA), and
GRPO with the multi-view reward (training/grpo/run.py).

Sections (training/sections.py): model, data, train, optim, lora, mesh (+ grpo). The run directory and resume: see
training/loop.py.
"""

from __future__ import annotations

from reasonrank_jax.training.sections import GRPOConfig, SFTConfig

SUBCOMMANDS = {
    "sft": (SFTConfig, "run_sft", "supervised fine-tuning on teacher reasoning (full or LoRA), resumable"),
    "grpo": (GRPOConfig, "run_grpo", "GRPO with the multi-view ranking reward, rollouts on our decoder, resumable"),
}


def run_grpo(config: GRPOConfig) -> int:
    from reasonrank_jax.training.grpo.run import run_grpo as run

    return run(config)


def _load_examples(path: str, tokenizer, data, what: str):
    from reasonrank_jax.data.sft import read_sft_examples
    from reasonrank_jax.errors import InputError

    examples, counts = read_sft_examples(path, tokenizer, data.max_length, data.overflow)
    if not examples:
        raise InputError(f"no usable examples ({dict(counts) or 'empty'})", path=path, field=what)
    return examples, counts


def run_sft(config: SFTConfig) -> int:  # noqa: C901 - the edge where every side effect of a run lives
    import jax
    from tqdm import tqdm

    from reasonrank_jax.data.stream import BatchPlan, bucket_lengths, micro_batch_rows, sft_batch, sft_response_width
    from reasonrank_jax.errors import InputError
    from reasonrank_jax.text import load_tokenizer
    from reasonrank_jax.training import loop, setup
    from reasonrank_jax.training.checkpoint import Checkpointer, PreemptionGuard
    from reasonrank_jax.training.sft import BATCH_KEYS, batch_shardings, jit_train_step

    model, data, train, lora_cfg = config.model, config.data, config.train, config.lora
    run, config_text, mesh = loop.open_run(config, "train sft")

    tokenizer = load_tokenizer(setup.tokenizer_dir(model))
    examples, counts = _load_examples(data.path, tokenizer, data, "data.path")
    heldout = _load_examples(data.heldout, tokenizer, data, "data.heldout")[0] if data.heldout else None
    lengths = [len(e["input_ids"]) for e in examples]
    plan = BatchPlan(lengths, train.global_batch, train.seed,
                     bucket_lengths(data.max_length, smallest=min(data.smallest_bucket, data.max_length)))
    if plan.steps_per_epoch == 0:
        raise InputError(f"{len(examples)} examples are fewer than one global batch ({train.global_batch})",
                         path=data.path, field="train.global_batch")
    total_steps = train.steps or train.epochs * plan.steps_per_epoch
    save_every = train.save_every or plan.steps_per_epoch

    prepared = setup.prepare(config, mesh, total_steps)
    spec, state, use_lora = prepared.spec, prepared.state, prepared.use_lora
    checkpointer = Checkpointer(f"{train.out}/checkpoints", keep=train.keep, save_every=save_every)
    start = checkpointer.latest_step() or 0
    if start:
        state = setup.restore(prepared, checkpointer, start)
    metadata = prepared.metadata(config)
    loop.start_run(run, train.out, config_text)
    log = loop.MetricsLog(train.out, start)
    step = jit_train_step(spec, prepared.shardings, mesh)
    heldout_loss = _heldout_evaluator(spec.cfg, heldout, data, train, tokenizer, spec, mesh) if heldout else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    accum = train.global_batch // train.micro_batch
    peak = loop.peak_flops(jax.devices()[0])
    flops_of: dict[tuple[int, int], float | None] = {}  # per (padded length, response width): one program each
    shardings_in = batch_shardings(mesh)
    loop.say(f"train sft: {len(examples)} examples ({dict(counts)}), {plan.steps_per_epoch} steps per epoch, "
          f"{total_steps} steps, {'LoRA rank ' + str(lora_cfg.rank) if use_lora else 'full fine-tuning'}, "
          f"mesh {dict(mesh.shape)}" + (f"; resuming at step {start}" if start else ""))

    preempted, s = False, start - 1  # s: the step index in flight (none when the run is already complete)
    with PreemptionGuard() as guard, tqdm(total=total_steps, initial=start, unit="step", desc="sft",
                                          dynamic_ncols=True, disable=jax.process_index() > 0) as progress:
        for s in range(start, total_steps):
            epoch, in_epoch = divmod(s, plan.steps_per_epoch)
            length = plan.padded_length(epoch, in_epoch)
            rows = [examples[i] for i in micro_batch_rows(plan.global_batch_indices(epoch, in_epoch), accum,
                                                          jax.process_index(), jax.process_count())]
            # the response window's width from the whole global batch: the same on every process
            width = sft_response_width([examples[i] for i in plan.global_batch_indices(epoch, in_epoch)], length)
            local = sft_batch(rows, length, pad_id, width)
            batch = {k: jax.make_array_from_process_local_data(
                shardings_in[k], local[k].reshape(accum, -1, *local[k].shape[1:])) for k in BATCH_KEYS}
            if (length, width) not in flops_of:
                flops_of[length, width] = loop.compiled_flops(step.lower(state, batch).compile())
            timer = loop.StepTimer()
            state, metrics = step(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            seconds = timer.lap()
            record = {"step": s + 1, "epoch": epoch, "loss": metrics["loss"], "lr": metrics["lr"],
                      "grad_norm": metrics["grad_norm"], "tokens": int(metrics["tokens"]),
                      "step_time_s": round(seconds, 6), "tokens_per_s": metrics["tokens"] / seconds,
                      "mfu": (flops_of[length, width] / seconds / (peak * jax.device_count()))
                      if flops_of[length, width] and peak else None}
            if heldout_loss and ((train.eval_every and (s + 1) % train.eval_every == 0) or s + 1 == total_steps):
                record["heldout_loss"] = heldout_loss(state)
            log.write(record)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            if loop.save_after_step(checkpointer, s + 1, total_steps, prepared.saved(state), metadata, guard):
                preempted = True
                break
    return loop.finish("train sft", train.out, s + 1, total_steps, preempted, checkpointer, log)


def _heldout_evaluator(cfg, examples, data, train, tokenizer, spec, mesh):
    """state -> token-mean loss over the held-out examples (micro-batches of train.micro_batch)."""
    import jax
    import numpy as np

    from reasonrank_jax.data.stream import bucket_lengths, padded_length, sft_batch
    from reasonrank_jax.sharding import MeshJitted
    from reasonrank_jax.training.sft import BATCH_KEYS, sft_loss_sums

    buckets = bucket_lengths(data.max_length, smallest=min(data.smallest_bucket, data.max_length))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loss_sums = MeshJitted(jax.jit(lambda params, trainable, batch: sft_loss_sums(
        cfg, spec.model_params(params, trainable), batch, spec.logits_chunk)), mesh)
    order = np.argsort([len(e["input_ids"]) for e in examples])
    batches = [[examples[i] for i in order[j:j + train.micro_batch]]
               for j in range(0, len(order), train.micro_batch)]

    def evaluate(state) -> float:
        numerator = denominator = 0.0
        for rows in batches:
            length = padded_length(max(len(r["input_ids"]) for r in rows), buckets)
            batch = sft_batch(rows, length, pad_id)  # its own response width (power-of-two buckets: few programs)
            n, d = loss_sums(state.params, state.trainable, {k: batch[k] for k in BATCH_KEYS})
            numerator, denominator = numerator + float(n), denominator + float(d)
        return numerator / max(denominator, 1.0)

    return evaluate
