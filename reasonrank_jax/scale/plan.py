"""`reasonrank-jax plan --config TRAIN.yaml --topology v5p-64 [--mesh D,F,T] [--phase ...] [--search-batch]`:
will this training config fit that TPU slice, and how fast can it go at best? Answered from a CPU host by the TPU
compiler itself.

The real program of a phase (the SFT step, the GRPO update, the rollout log-prob pass, the rollout decode) is
compiled for the named topology from abstract arrays (`jax.ShapeDtypeStruct`s with their shardings on a mesh over
the topology's devices): no TPU, no weights (model.path may hold only config.json). The compiler's memory analysis
gives per chip the arguments (parameters, optimizer state, batch), outputs, temporaries and peak; a program too
large fails with RESOURCE_EXHAUSTED, required against available. Resident: what stays in HBM beside the phase's
program during a run (the rollout decode runs while the train state is held; a full fine-tune keeps a frozen
reference copy for the KL term), computed from the sharded shapes and added to the peak. FLOPs per chip come from
the compiler's cost analysis and from the model's shapes (the compiler counts a loop body once: the
layer scan is undercounted), the larger is used; the step-time lower bound is
max(FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth) per chip.

Exit 0: fits; 3: does not fit (required against available printed); 2: bad input, or no TPU compiler.
`--search-batch`: the largest micro-batch that fits; when none does, the first of: remat=full, more tensor
parallelism, a shorter sequence, that makes the smallest one fit, printed as the KEY=VALUE to add.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import sys
import time

from reasonrank_jax.config import option
from reasonrank_jax.errors import InputError

PHASES = ("sft", "grpo-update", "logprobs", "rollout")
NOT_FIT_EXIT_CODE = 3
INSTALL_HINT = ("the TPU compiler (libtpu) is not installed: pip install 'reasonrank-jax[tpu]' (it is only run "
                "here to compile; set JAX_PLATFORMS=cpu for the other commands on this host)")


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    TRAINING_CONFIG = True  # --config is the training YAML; KEY=VALUE override it

    topology: str | None = option(required=True, metavar="TPU",
                                  help="TPU slice: v4-N, v5p-N (N TensorCores, 2 per chip), v5e-N, v6e-N (N chips)")
    slices: int = option(1, min=1, help="slices joined over the data-center network (multi-slice)")
    mesh: str | None = option(metavar="D,F,T", help="mesh data,fsdp,tensor (one may be -1); default: the config's "
                                                    "mesh section")
    phase: str | None = option(choices=PHASES, help="program to compile (default: sft for an SFT config, "
                                                    "grpo-update for a GRPO one)")
    trainer: str | None = option(choices=("sft", "grpo"), help="which trainer the YAML is for (default: grpo when "
                                                               "it has a grpo section)")
    response_tokens: int = option(4096, min=1, help="sft: longest response in a batch (the loss window)")
    search_batch: bool = option(False, help="find the largest micro-batch that fits (and a change that makes a "
                                            "non-fitting config fit)")
    json: bool = option(False, help="print one JSON object instead of text")
    config: str | None = option(flag=False, help="training YAML")
    overrides: tuple[str, ...] = option((), flag=False, help="section.key=VALUE overrides of the training YAML")


CONFIG = PlanConfig


# ---------------------------------------------------------------------------------------------------------------------
# The TPU compiler on a CPU host


def tpu_compiler_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None or bool(os.environ.get("TPU_LIBRARY_PATH"))


def _quiet_libtpu_env(slice_name: str) -> None:
    """libtpu looks for a TPU VM's metadata server and worker list unless told; none of that exists here."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # ALLOW_MULTIPLE_LIBTPU_LOAD: compiling touches no TPU, so plans may run side by side (libtpu's lockfile would
    # otherwise refuse a second process)
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
                       ("TPU_ACCELERATOR_TYPE", slice_name),
                       ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_WORKER_ID", "0")):
        os.environ.setdefault(key, value)


def topology_devices(tpu, slices: int = 1):
    """The devices of `slices` x the TPU slice `tpu` (a `topology.TpuSlice`), for compiling, not running."""
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=tpu.topology_name, chip_config_name=tpu.generation.chip_config,
        chips_per_host_bounds=tpu.host_bounds, wrap=(False,) * 3, num_slices=slices)
    return sorted(topology.devices, key=lambda d: (getattr(d, "slice_index", 0), d.id))


# ---------------------------------------------------------------------------------------------------------------------
# Programs


@dataclasses.dataclass
class Program:
    """A phase's program, ready to lower: jitted function and abstract arguments; `resident` bytes per chip stay
    in HBM beside it; `model_flops` per chip from the shapes (forward, x3 with the backward pass)."""

    phase: str
    jitted: object
    args: tuple
    kwargs: dict
    resident: int
    model_flops: float
    describe: str
    tokens: int
    model_bytes: float = 0.0  # per chip, HBM bytes a step must at least move where the compiler undercounts (decode)


def per_chip_bytes(tree) -> int:
    """Bytes one device holds of the sharded ShapeDtypeStructs in a pytree (the analytic size)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.ShapeDtypeStruct):  # static arguments (the model config)
            continue
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _abstract(shape, dtype, sharding):
    import jax

    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def build_state(train_config, mesh):
    """(model config, StepSpec, abstract train state with shardings, shardings, use_lora) without reading weights."""
    import jax

    from reasonrank_jax.models.config import ModelConfig
    from reasonrank_jax.models.lora import init_lora, lora_scale
    from reasonrank_jax.models.transformer import init_params
    from reasonrank_jax.training.checkpoint import abstract_like
    from reasonrank_jax.training.optim import make_optimizer
    from reasonrank_jax.training.sft import StepSpec
    from reasonrank_jax.training.state import init_state, state_shardings

    model, optim, lora_cfg = train_config.model, train_config.optim, train_config.lora
    cfg = ModelConfig.from_pretrained_dir(model.path, param_dtype=model.param_dtype, dtype=model.dtype,
                                          remat_policy=model.remat)
    optimizer, schedule = make_optimizer(optim.lr, 1000, schedule=optim.schedule, warmup_ratio=optim.warmup_ratio,
                                         weight_decay=optim.weight_decay, clip_norm=optim.clip_norm, b1=optim.b1,
                                         b2=optim.b2, eps=optim.eps)
    use_lora = lora_cfg.rank > 0
    rng = jax.random.PRNGKey(0)

    def state_of():
        params = init_params(cfg, rng)
        lora = init_lora(params, lora_cfg.rank, lora_cfg.targets, rng) if use_lora else {}
        return init_state(params, lora, optimizer, rng)

    abstract = jax.eval_shape(state_of)
    shardings = state_shardings(mesh, abstract, optimizer)
    spec = StepSpec(cfg=cfg, optimizer=optimizer, schedule=schedule,
                    lora_scale=lora_scale(lora_cfg.alpha, lora_cfg.rank) if use_lora else None,
                    logits_chunk=train_config.train.logits_chunk)
    return cfg, spec, abstract_like(abstract, shardings), shardings, use_lora


def _matmul_params(cfg) -> int:
    """Parameters that multiply every token (the embedding lookup does not; the output head does)."""
    return cfg.num_params() - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1)


def forward_flops(cfg, sequences: int, length: int) -> float:
    """FLOPs of one forward pass: 2 x matmul parameters per token, and the attention's two [t, t] products per layer
    (computed whole, masked: the training attention does not skip the causal upper half)."""
    attention = 4.0 * length * length * cfg.num_heads * cfg.head_dim * cfg.num_layers
    return sequences * (2.0 * _matmul_params(cfg) * length + attention)


def build_program(phase: str, trainer: str, train_config, mesh, response_tokens: int = 4096) -> Program:
    import jax
    import jax.numpy as jnp

    from reasonrank_jax.sharding import batch_sharding
    from reasonrank_jax.training.sft import batch_shardings as sft_shardings, jit_train_step

    cfg, spec, state, shardings, use_lora = build_state(train_config, mesh)
    devices = mesh.devices.size
    micro = train_config.train.micro_batch
    remat = f"remat {cfg.remat_policy}"
    if phase == "sft":
        data = train_config.data
        from reasonrank_jax.data.stream import response_bucket

        accum = train_config.train.global_batch // micro
        length, width = data.max_length, response_bucket(min(response_tokens, data.max_length - 1),
                                                         data.max_length)
        s = sft_shardings(mesh)
        batch = {"input_ids_bt": _abstract((accum, micro, length), jnp.int32, s["input_ids_bt"]),
                 "attention_mask_bt": _abstract((accum, micro, length), jnp.int32, s["attention_mask_bt"]),
                 "response_start_b": _abstract((accum, micro), jnp.int32, s["response_start_b"]),
                 "response_mask_br": _abstract((accum, micro, width), jnp.int32, s["response_mask_br"])}
        tokens = accum * micro * length
        return Program("sft", jit_train_step(spec, shardings, mesh), (state, batch), {}, 0,
                       3.0 * forward_flops(cfg, accum * micro, length) / devices,
                       f"{accum} x {micro} sequences of {length} tokens (loss window {width}), {remat}", tokens)

    if trainer != "grpo":
        raise InputError(f"phase {phase} needs a GRPO config (one with a grpo section)", field="--phase")
    from reasonrank_jax.inference.decode import bucket_length
    from reasonrank_jax.training.grpo import step as grpo_step
    from reasonrank_jax.training.grpo.rollout import trainer_prompt_bucket

    g = train_config.grpo
    gspec = grpo_step.GRPOSpec(step=spec, clip=g.clip, clip_c=g.clip_c, kl_coef=g.kl_coef, temperature=g.temperature)
    keep_reference = not use_lora and g.kl_coef > 0  # full fine-tuning: a frozen copy of the starting weights
    reference_bytes = per_chip_bytes(state.params) if keep_reference else 0
    state_bytes = per_chip_bytes(state)
    prompt, response = trainer_prompt_bucket(g.max_prompt), bucket_length(g.max_response)
    length = prompt + response
    s = grpo_step.batch_shardings(mesh)

    if phase == "grpo-update":
        rows = g.mini_batch * g.rollouts
        accum = rows // micro
        batch = {k: _abstract((accum, micro, length), jnp.int32, s[k]) for k in grpo_step.SEQUENCE_KEYS}
        batch["response_mask_br"] = _abstract((accum, micro, response), jnp.int32, s["response_mask_br"])
        for k in ("old_logp_br", "ref_logp_br", "sampler_logp_br"):
            batch[k] = _abstract((accum, micro, response), jnp.float32, s[k])
        batch["advantages_b"] = _abstract((accum, micro), jnp.float32, s["advantages_b"])
        batch["on_policy"] = _abstract((), jnp.bool_, s["on_policy"])
        tokens = rows * length
        return Program("grpo-update", grpo_step.jit_update_step(gspec, shardings, mesh), (state, batch), {},
                       reference_bytes, 3.0 * forward_flops(cfg, rows, length) / devices,
                       f"{accum} x {micro} sequences of {prompt} + {response} tokens, {remat}", tokens)

    rows = g.prompts_per_step * g.rollouts
    if phase == "logprobs":
        n = rows // micro
        sequences = {k: _abstract((n, micro, length), jnp.int32, s[k]) for k in grpo_step.SEQUENCE_KEYS}
        sequences["response_mask_br"] = _abstract((n, micro, response), jnp.int32, s["response_mask_br"])
        jitted = grpo_step.jit_rollout_logprobs(gspec, shardings, mesh, with_ref_params=keep_reference)
        args = (state.params, state.trainable) + ((state.params,) if keep_reference else ()) + (sequences,)
        resident = state_bytes - per_chip_bytes(state.params) - (per_chip_bytes(state.lora) if use_lora else 0)
        passes = 2 if g.kl_coef > 0 else 1
        tokens = rows * length
        return Program("logprobs", jitted, args, {}, resident, passes * forward_flops(cfg, rows, length) / devices,
                       f"{n} x {micro} sequences of {prompt} + {response} tokens, policy"
                       + (" and reference" if g.kl_coef > 0 else ""), tokens * passes)

    # rollout: the sampler (inference/decode.py `_generate`) on the policy's weights in the decode layout
    from reasonrank_jax.inference.decode import _generate, cache_segments
    from reasonrank_jax.inference.sampling import SamplingParams
    from reasonrank_jax.models.transformer import decode_params
    from reasonrank_jax.sharding import params_shardings

    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    prompts = -(-bucket_length(g.prompts_per_step, minimum=1) // data_parallel) * data_parallel
    p = bucket_length(g.max_prompt)
    decode = jax.eval_shape(decode_params, state.params)
    decode = jax.tree.map(lambda x, sh: _abstract(x.shape, x.dtype, sh), decode, params_shardings(mesh, decode))
    ids = _abstract((prompts, p), jnp.int32, batch_sharding(mesh))
    sampling = SamplingParams(g.temperature, 1.0, 0, 0.0, True)
    key = _abstract((2,), jnp.uint32, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    eos = _abstract((1,), jnp.int32, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    kwargs = dict(cache_lens=cache_segments(p, g.max_response), max_new_tokens=g.max_response, sampling=sampling,
                  num_eos=1, with_logprobs=True, samples=g.rollouts)
    samples = prompts * g.rollouts
    # prompt tokens once per prompt, then every sample's new tokens
    tokens = prompts * p + samples * g.max_response
    # Each new token reads the chip's weights and its rows' KV cache (on average half the new tokens written): the
    # compiler counts the decode loop's body once, so this bound comes from the shapes.
    cache_bytes = (samples / data_parallel * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim
                   * (p + g.max_response / 2) * jnp.dtype(cfg.dtype).itemsize)
    model_bytes = g.max_response * (per_chip_bytes(decode) + cache_bytes)
    return Program("rollout", _generate, (cfg, decode, ids, ids, eos, key), kwargs, state_bytes + reference_bytes,
                   (forward_flops(cfg, prompts, p) + 2.0 * _matmul_params(cfg) * samples * g.max_response
                    + 4.0 * samples * g.max_response * (p + g.max_response) * cfg.num_heads * cfg.head_dim
                    * cfg.num_layers) / devices,
                   f"{prompts} prompts of {p} tokens x {g.rollouts} samples of up to {g.max_response} new tokens "
                   f"(KV cache {kwargs['cache_lens'][-1]} slots)", tokens, model_bytes)


# ---------------------------------------------------------------------------------------------------------------------
# Compiling and reporting

_EXHAUSTED = re.compile(r"required for (.+?) \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass
class Fit:
    phase: str
    topology: str
    slices: int
    mesh: dict
    micro_batch: int
    describe: str
    available: float
    fits: bool
    peak: float                       # program peak + resident, per chip
    resident: int = 0
    argument: int | None = None
    output: int | None = None
    alias: int | None = None
    temporary: int | None = None
    program_peak: int | None = None
    flops: float | None = None        # per chip, the compiler's
    model_flops: float | None = None  # per chip, from the model's shapes (`forward_flops`)
    bytes_accessed: float | None = None
    compute_s: float | None = None
    memory_s: float | None = None
    step_s: float | None = None
    tokens: int = 0
    compile_s: float = 0.0
    error: str | None = None


def compile_fit(program: Program, tpu, slices: int, mesh) -> Fit:
    generation = tpu.generation
    fit = Fit(phase=program.phase, topology=tpu.name, slices=slices, mesh=dict(mesh.shape), micro_batch=0,
              describe=program.describe, available=tpu.hbm_bytes, fits=False, peak=0.0, resident=program.resident,
              model_flops=program.model_flops, tokens=program.tokens)
    started = time.perf_counter()
    try:
        compiled = program.jitted.lower(*program.args, **program.kwargs).compile()
    except Exception as err:  # noqa: BLE001 - the compiler's out-of-memory is an answer, anything else a bug
        match = _EXHAUSTED.search(str(err))
        if "RESOURCE_EXHAUSTED" not in str(err) or not match:
            raise
        fit.compile_s = time.perf_counter() - started
        fit.error = str(err).strip().splitlines()[0][:400]
        # temporaries only: the arguments (state, batch) come on top, sized from their shardings
        fit.temporary = int(float(match.group(2)) * _UNIT[match.group(3)])
        fit.argument = per_chip_bytes(program.args)
        fit.peak = fit.temporary + fit.argument + program.resident
        fit.available = float(match.group(4)) * _UNIT[match.group(5)]
        return fit
    fit.compile_s = time.perf_counter() - started
    stats = compiled.memory_analysis()
    fit.argument, fit.output = stats.argument_size_in_bytes, stats.output_size_in_bytes
    fit.alias, fit.temporary = stats.alias_size_in_bytes, stats.temp_size_in_bytes
    # The compiler's peak can sit below arguments + temporaries (its heap simulation overlaps buffers); the fit is
    # judged on the larger, so that "fits" errs on the safe side.
    fit.program_peak = max(getattr(stats, "peak_memory_in_bytes", 0) or 0,
                           fit.argument + fit.output - fit.alias + fit.temporary)
    fit.peak = fit.program_peak + program.resident
    fit.fits = fit.peak <= fit.available
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    fit.flops = float(cost.get("flops", 0.0)) or None
    fit.bytes_accessed = float(cost.get("bytes accessed", 0.0)) or None
    flops = max(fit.flops or 0.0, fit.model_flops or 0.0)
    fit.compute_s = flops / generation.peak_bf16_flops
    fit.memory_s = max(fit.bytes_accessed or 0.0, program.model_bytes) / generation.hbm_bytes_per_s
    fit.step_s = max(fit.compute_s, fit.memory_s)
    return fit


def gib(n: float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB"


def report_text(fit: Fit, tpu) -> str:
    mesh = " ".join(f"{k}={v}" for k, v in fit.mesh.items())
    lines = [f"{fit.phase} on {fit.topology}" + (f" x {fit.slices} slices" if fit.slices > 1 else "")
             + f" ({tpu.chips * fit.slices} chips, {tpu.hosts * fit.slices} hosts), mesh {mesh}: {fit.describe}"]
    if fit.error:
        lines.append(f"  compiler: {fit.error}")
    else:
        lines.append(f"  per chip: arguments {gib(fit.argument)}, outputs {gib(fit.output)} (aliased "
                     f"{gib(fit.alias)}), temporaries {gib(fit.temporary)}, program peak {gib(fit.program_peak)}"
                     + (f", resident beside it {gib(fit.resident)}" if fit.resident else ""))
    verdict = "fits" if fit.fits else "DOES NOT FIT"
    lines.append(f"  {verdict}: peak {gib(fit.peak)} of {gib(fit.available)} HBM per chip, headroom "
                 f"{gib(fit.available - fit.peak)} ({100 * (1 - fit.peak / fit.available):.0f}%)")
    if fit.step_s is not None:
        chips = tpu.chips * fit.slices
        lines.append(f"  FLOPs per chip {fit.flops or 0:.3g} (compiler), {fit.model_flops:.3g} (model: "
                     f"matmuls and attention); step >= {fit.step_s:.3g} s (compute {fit.compute_s:.3g} s at "
                     f"{tpu.generation.peak_bf16_flops / 1e12:.0f} TFLOP/s, memory {fit.memory_s:.3g} s at "
                     f"{tpu.generation.hbm_bytes_per_s / 1e9:.0f} GB/s), <= {fit.tokens / fit.step_s:,.0f} tokens/s "
                     f"on {chips} chips")
    lines.append(f"  compiled in {fit.compile_s:.1f} s")
    return "\n".join(lines)


def _mesh_shape(text: str | None, train_config) -> tuple[int, int, int]:
    if text is None:
        return train_config.mesh.shape
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or any(x == 0 or x < -1 for x in shape) or shape.count(-1) > 1:
        raise InputError(f"expected three sizes data,fsdp,tensor (one may be -1), got {text!r}", field="--mesh")
    return shape


def make_plan_mesh(shape, devices):
    from reasonrank_jax.sharding import make_mesh

    try:
        return make_mesh(shape, devices)
    except ValueError as err:
        raise InputError(f"{err} (the slice has {len(devices)} chips)", field="--mesh") from None


def _with(train_config, **sections):
    """train_config with some section fields replaced: _with(c, train={"micro_batch": 8})."""
    return dataclasses.replace(train_config, **{
        name: dataclasses.replace(getattr(train_config, name), **changes) for name, changes in sections.items()})


def _rows(phase: str, train_config) -> int:
    """Sequences one update (or pass) splits into micro-batches."""
    if phase == "sft":
        return train_config.train.global_batch
    g = train_config.grpo
    return g.mini_batch * g.rollouts if phase == "grpo-update" else g.prompts_per_step * g.rollouts


def search(phase, trainer, train_config, tpu, slices, mesh, devices, response_tokens, log):
    """(best fit, KEY=VALUE changes): the largest micro-batch that fits; else the first change that fits."""
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = _rows(phase, train_config)
    candidates = [m for m in range(data_parallel, rows + 1, data_parallel) if rows % m == 0]
    if phase == "rollout" or not candidates:
        candidates = [train_config.train.micro_batch]

    def attempt(config, mesh_, micro):
        fit = compile_fit(build_program(phase, trainer, _with(config, train={"micro_batch": micro}), mesh_,
                                        response_tokens), tpu, slices, mesh_)
        fit.micro_batch = micro
        log(f"  try micro_batch={micro} mesh={dict(mesh_.shape)} {fit.describe}: "
            f"{'fits' if fit.fits else 'does not fit'}, peak {gib(fit.peak)} ({fit.compile_s:.0f} s)")
        return fit

    low, high, best = 0, len(candidates) - 1, None
    while low <= high:  # memory grows with the micro-batch: bisect the candidates
        middle = (low + high) // 2
        fit = attempt(train_config, mesh, candidates[middle])
        if fit.fits:
            best, low = fit, middle + 1
        else:
            high = middle - 1
    if best is not None:
        return best, [f"train.micro_batch={best.micro_batch}"]

    smallest = candidates[0]
    changes = []
    if train_config.model.remat != "full":
        changes.append((["model.remat=full"], _with(train_config, model={"remat": "full"}), mesh))
    tensor = mesh.shape["tensor"]
    while tensor * 2 <= min(mesh.devices.size, 8):
        tensor *= 2
        shape = (mesh.shape["data"], mesh.devices.size // (mesh.shape["data"] * tensor), tensor)
        changes.append(([f"--mesh {shape[0]},{shape[1]},{shape[2]}"], train_config, make_plan_mesh(shape, devices)))
    if phase == "sft":
        length = train_config.data.max_length
        while length // 2 >= 1024:
            length //= 2
            changes.append(([f"data.max_length={length}"], _with(train_config, data={"max_length": length}), mesh))
    for change, config, mesh_ in changes:
        dp = mesh_.shape["data"] * mesh_.shape["fsdp"]
        micro = dp if rows % dp == 0 and phase != "rollout" else smallest  # the least the mesh takes
        fit = attempt(config, mesh_, micro)
        if fit.fits:
            return fit, [f"train.micro_batch={micro}", *change]
    return None, []


def main(config: PlanConfig) -> int:
    from reasonrank_jax.scale.topology import parse_slice
    from reasonrank_jax.training.sections import load_training_config

    tpu = parse_slice(config.topology)
    phase_trainer = None if config.phase is None else "sft" if config.phase == "sft" else "grpo"
    trainer, train_config = load_training_config(config.config, config.overrides, config.trainer or phase_trainer)
    phase = config.phase or ("sft" if trainer == "sft" else "grpo-update")
    if phase == "sft" and trainer != "sft":
        raise InputError("phase sft needs an SFT config", field="--phase")
    shape = _mesh_shape(config.mesh, train_config)
    if not tpu_compiler_available():
        raise InputError(INSTALL_HINT)
    _quiet_libtpu_env(tpu.name)

    log = (lambda text: print(text, file=sys.stderr, flush=True)) if config.json else \
        (lambda text: print(text, flush=True))
    devices = topology_devices(tpu, config.slices)
    mesh = make_plan_mesh(shape, devices)
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if train_config.train.micro_batch % data_parallel and not config.search_batch:
        raise InputError(f"must be a multiple of the data-parallel chips (mesh data x fsdp = {data_parallel}), got "
                         f"{train_config.train.micro_batch}; or pass --search-batch", field="train.micro_batch")
    log(f"plan: {trainer} config {config.config}, {tpu.name} ({tpu.chips} chips x {config.slices} slice(s)), "
        f"compiling {phase} for the TPU on this host ...")
    changes: list[str] = []
    if config.search_batch:
        fit, changes = search(phase, trainer, train_config, tpu, config.slices, mesh, devices,
                              config.response_tokens, log)
        if fit is None:
            fit = compile_fit(build_program(phase, trainer, train_config, mesh, config.response_tokens), tpu,
                              config.slices, mesh)
    else:
        fit = compile_fit(build_program(phase, trainer, train_config, mesh, config.response_tokens), tpu,
                          config.slices, mesh)
    fit.micro_batch = fit.micro_batch or train_config.train.micro_batch
    if config.json:
        print(json.dumps({**dataclasses.asdict(fit), "changes": changes, "chips": tpu.chips * config.slices,
                          "hosts": tpu.hosts * config.slices}))
    else:
        print(report_text(fit, tpu))
        if config.search_batch:
            print(f"  search: {' '.join(changes)} fits" if changes else
                  "  search: no micro-batch, remat, tensor-parallel or length change fits this slice; try a larger "
                  "slice or LoRA")
    if not fit.fits:
        print(f"plan: does not fit: requires {gib(fit.peak)} per chip, {gib(fit.available)} available on "
              f"{tpu.name}", file=sys.stderr)
        return NOT_FIT_EXIT_CODE
    return 0

