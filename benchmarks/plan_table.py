"""The README's TPU fit table: `reasonrank-jax plan --json` for the paper's recipes on a few TPU slices, compiled on
this CPU host by the TPU compiler (libtpu), one subprocess per combination.

    python benchmarks/plan_table.py [--results benchmarks/results/plan_table.jsonl] [--timeout 480]
        [--search-timeout 900] [--budget-min 60] [--no-search] [--table-only]

libtpu must be importable (pip install -e ".[tpu]", or PYTHONPATH=DIR where it is installed).

Recipes (the repo's paper configs, their sequence lengths kept: SFT data.max_length 23,552; GRPO prompts up to
20,480 + responses up to 3,072 tokens):
  7B full SFT            configs/sft_qwen25_7b_full.yaml    --phase sft
  7B full GRPO update    configs/grpo_qwen25_7b_full.yaml   --phase grpo-update
  7B rollout decode      configs/grpo_qwen25_7b_full.yaml   --phase rollout (beside the train state + reference)
  32B LoRA SFT           configs/sft_qwen25_32b_lora.yaml   --phase sft
  32B LoRA GRPO update   configs/grpo_qwen25_32b_lora.yaml  --phase grpo-update
  32B rollout decode     configs/grpo_qwen25_32b_lora.yaml  --phase rollout
on v5p-16, v5p-64, v5p-128, v6e-64 and v6e-256. The models are config.json-only directories (Qwen2.5-7B-Instruct and
Qwen2.5-32B-Instruct's shapes; no weights: `plan` compiles from abstract arrays).

Mesh and micro-batch per slice: all chips on "fsdp" and one sequence per chip (train.micro_batch = the chips), so
the paper's global batch of 64 sequences (SFT: global_batch 64; GRPO: mini-batch 8 prompts x 8 rollouts) is
8 x 8, 2 x 32 or 1 x 64 micro-batches. v6e-256's 256 chips exceed 64 sequences: mesh 1,64,4 (tensor parallelism 4)
and micro-batch 64. A GRPO run has one mesh for everything, so the rollout is compiled on the update's mesh (its
16 prompts are padded up to a multiple of the data-parallel chips, as the trainer does).

A combination that does not fit (plan exits 3) is compiled again with `--search-batch`, which finds the change
that makes it fit (a larger micro-batch never helps one that does not fit at one sequence per chip: it tries more
tensor parallelism, then, for SFT, shorter sequences); that change goes into the table's last column.

Plain runs go first, slice by slice (v5p-64, v6e-64, v5p-16, v5p-128, v6e-256), each slice's recipes cheapest
first, so that a time budget covers every recipe on the likeliest slices first; then the searches, SEARCH_FIRST's
before the others.
A recipe whose compile timed out on one slice is not tried on the others ("compile too slow here").

Results: one JSON line per run appended to --results (the plan's JSON under "plan"); a combination already there is
skipped (unless it ended in an error), so a rerun resumes. A run over --timeout seconds (--search-timeout for a
search) is recorded as "compile too slow here". --budget-min: no new run starts after that many minutes. At the
end, the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30

QWEN25_COMMON = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064,
                     max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
                     tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645)
MODELS = {
    # Qwen/Qwen2.5-7B-Instruct and Qwen/Qwen2.5-32B-Instruct config.json (shapes)
    "7B": dict(QWEN25_COMMON, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4),
    "32B": dict(QWEN25_COMMON, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                num_attention_heads=40, num_key_value_heads=8),
}

# (name, model, config, phase), cheapest first
RECIPES = [
    ("7B full SFT", "7B", "configs/sft_qwen25_7b_full.yaml", "sft"),
    ("7B full GRPO update", "7B", "configs/grpo_qwen25_7b_full.yaml", "grpo-update"),
    ("7B rollout decode", "7B", "configs/grpo_qwen25_7b_full.yaml", "rollout"),
    ("32B LoRA SFT", "32B", "configs/sft_qwen25_32b_lora.yaml", "sft"),
    ("32B LoRA GRPO update", "32B", "configs/grpo_qwen25_32b_lora.yaml", "grpo-update"),
    ("32B rollout decode", "32B", "configs/grpo_qwen25_32b_lora.yaml", "rollout"),
]
# slice -> (mesh data,fsdp,tensor, micro-batch)
SLICES = {
    "v5p-16": ((1, 8, 1), 8),
    "v5p-64": ((1, 32, 1), 32),
    "v5p-128": ((1, 64, 1), 64),
    "v6e-64": ((1, 64, 1), 64),
    "v6e-256": ((1, 64, 4), 64),
}
ORDER = ("v5p-64", "v6e-64", "v5p-16", "v5p-128", "v6e-256")  # the order runs go in
# searches to run before the others: the README's example (7B SFT on v5p-64) and the 32B one closest to fitting
SEARCH_FIRST = [("7B full SFT", "v5p-64"), ("32B LoRA SFT", "v5p-16"), ("7B full GRPO update", "v5p-64"),
                ("32B LoRA GRPO update", "v5p-16")]


def write_models(work: str) -> dict[str, str]:
    paths = {}
    for name, config in MODELS.items():
        path = os.path.join(work, f"qwen25-{name.lower()}")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
        paths[name] = path
    return paths


def load_results(path: str) -> dict[tuple, dict]:
    done = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    done[(row["recipe"], row["slice"], row["mode"])] = row
    return done


def run_plan(recipe, slice_name, mode, model_dirs, work, timeout) -> dict:
    name, model, config, phase = recipe
    (mesh, micro) = SLICES[slice_name]
    data = os.path.join(work, "sft.json" if phase == "sft" else "rl.parquet")
    open(data, "a").close()  # plan reads no data; the config only needs a path
    overrides = [f"model.path={model_dirs[model]}", f"data.path={data}", f"train.out={os.path.join(work, 'run')}",
                 f"train.micro_batch={micro}"]
    command = [sys.executable, "-m", "reasonrank_jax.cli", "plan", "--config", config, "--topology", slice_name,
               "--phase", phase, "--mesh", ",".join(map(str, mesh)), "--json"]
    command += (["--search-batch"] if mode == "search" else []) + overrides
    row = {"recipe": name, "slice": slice_name, "mode": mode, "mesh_arg": ",".join(map(str, mesh)),
           "micro_batch_arg": micro, "command": "reasonrank-jax " + " ".join(command[3:])}
    # ALLOW_MULTIPLE_LIBTPU_LOAD: libtpu otherwise takes /tmp/libtpu_lockfile, and a second compile on this host
    # (another user's plan) fails with "Internal error when accessing libtpu multi-process lockfile"
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    started = time.time()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
        out, err = proc.communicate()
        row.update(status="timeout", rc=None, wall_s=round(time.time() - started, 1),
                   note=f"compile too slow here (> {timeout} s)", stderr_tail=err[-2000:])
        return row
    row.update(rc=proc.returncode, wall_s=round(time.time() - started, 1))
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode in (0, 3) and lines:
        row.update(status="ok", plan=json.loads(lines[-1]))
        row["search_log"] = [line.strip() for line in err.splitlines() if line.strip().startswith("try ")]
    else:
        row.update(status="error", stderr_tail=err[-3000:], stdout_tail=out[-1000:])
    return row


def fmt_flops(x: float | None) -> str:
    if not x:
        return "?"
    exponent = len(str(int(x))) - 1
    return f"{x / 10**exponent:.2f}e{exponent}"


def table(done: dict) -> str:
    from reasonrank_jax.scale.topology import parse_slice

    head = ("| recipe | slice (chips) | mesh d,f,t | micro-batch | peak / HBM per chip (GiB) | fits | FLOPs per chip "
            "| step >= | compile | does not fit: change that fits (peak, step >=) |")
    lines = [head, "|" + "---|" * 10]
    for name, *_ in RECIPES:
        for slice_name in SLICES:
            row = done.get((name, slice_name, "plain"))
            mesh, micro = SLICES[slice_name]
            label = f"{slice_name} ({parse_slice(slice_name).chips})"
            if row is None:
                slow = [r["slice"] for r in done.values()
                        if r["recipe"] == name and r["mode"] == "plain" and r["status"] == "timeout"]
                what = f"not run (compile too slow here on {slow[0]})" if slow else "not run"
                lines.append(f"| {name} | {label} | {','.join(map(str, mesh))} | {micro} | {what} | | | | | |")
                continue
            if row["status"] != "ok":
                what = row.get("note") or "error: " + (row.get("stderr_tail") or "").strip().splitlines()[-1][:120]
                lines.append(f"| {name} | {label} | {','.join(map(str, mesh))} | {micro} | {what} | | | | "
                             f"{row['wall_s']:.0f} s | |")
                continue
            p = row["plan"]
            m = p["mesh"]
            flops = max(p.get("flops") or 0, p.get("model_flops") or 0)
            step = f"{p['step_s']:.3g} s" if p.get("step_s") is not None else "—"  # out of memory: no program
            change = ""
            if not p["fits"]:
                search = done.get((name, slice_name, "search"))
                if search is None:
                    change = "search not run (time budget)"
                elif search["status"] != "ok":
                    change = search.get("note") or "search failed"
                elif search["plan"].get("changes") and search["plan"]["fits"]:
                    s = search["plan"]
                    change = (f"`{' '.join(s['changes'])}` ({s['peak'] / GIB:.1f} GiB, "
                              f"{s['step_s']:.3g} s)" if s.get("step_s") else f"`{' '.join(s['changes'])}`")
                else:
                    tried = "micro-batch, tensor parallelism" + (", length" if "SFT" in name else "")
                    change = f"none found ({tried} tried)"
            lines.append(
                f"| {name} | {label} | {m['data']},{m['fsdp']},{m['tensor']} | {p['micro_batch']} "
                f"| {p['peak'] / GIB:.2f} / {p['available'] / GIB:.2f} | {'yes' if p['fits'] else '**no**'} "
                f"| {fmt_flops(flops)} | {step} | {p['compile_s']:.0f} s | {change} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "plan_table.jsonl"))
    parser.add_argument("--work", default="/tmp/plan_table", help="config.json-only model dirs, empty data files")
    parser.add_argument("--timeout", type=float, default=480, help="seconds per plain compile")
    parser.add_argument("--search-timeout", type=float, default=900, help="seconds per --search-batch run")
    parser.add_argument("--budget-min", type=float, default=60, help="start no run after this many minutes")
    parser.add_argument("--no-search", action="store_true")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)

    done = load_results(args.results)
    if not args.table_only:
        os.makedirs(os.path.dirname(args.results), exist_ok=True)
        os.makedirs(args.work, exist_ok=True)
        model_dirs = write_models(args.work)
        started = time.time()
        out_of_budget = False
        # every plain run first, slice by slice (the most telling first), each slice's recipes cheapest first; then
        # the searches for those that do not fit. A recipe that timed out is not tried on the other slices.
        plain_order = [(slice_name, recipe) for slice_name in ORDER for recipe in RECIPES]
        by_name = {r[0]: r for r in RECIPES}
        search_order = [(s, by_name[r]) for r, s in SEARCH_FIRST] + [x for x in plain_order
                                                                      if (x[1][0], x[0]) not in SEARCH_FIRST]
        for mode, order in (("plain", plain_order), ("search", search_order)):
            for slice_name, recipe in order:
                key = (recipe[0], slice_name, mode)
                if key in done and done[key]["status"] != "error":  # errors are tried again
                    continue
                if any(row["status"] == "timeout" and row["recipe"] == recipe[0] and row["mode"] == mode
                       for row in done.values()):
                    continue
                if mode == "search":
                    plain = done.get((recipe[0], slice_name, "plain"))
                    if args.no_search or not plain or plain["status"] != "ok" or plain["plan"]["fits"]:
                        continue
                if time.time() - started > args.budget_min * 60:
                    out_of_budget = True
                    break
                print(f"[{time.strftime('%H:%M:%S')}] {mode}: {recipe[0]} on {slice_name} ...", flush=True)
                row = run_plan(recipe, slice_name, mode, model_dirs, args.work,
                               args.search_timeout if mode == "search" else args.timeout)
                p = row.get("plan") or {}
                print(f"    {row['status']} rc={row['rc']} {row['wall_s']} s"
                      + (f": peak {p['peak'] / GIB:.2f} GiB of {p['available'] / GIB:.2f}, "
                         f"fits={p['fits']} changes={p.get('changes')}" if p else ""), flush=True)
                with open(args.results, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                done[key] = row
        if out_of_budget:
            print(f"budget of {args.budget_min} min spent: the rest not run (rerun to resume)", flush=True)
    print(table(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
