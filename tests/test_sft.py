"""The SFT step against independent references: transformers' loss, torch's AdamW update; exact gradient
accumulation; one device against a (2, 2, 2) mesh; LoRA leaves the base bitwise unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from reasonrank_jax.data.stream import response_window
from reasonrank_jax.models import load_pretrained
from reasonrank_jax.models.lora import init_lora, lora_scale, merge_lora
from reasonrank_jax.sharding import make_mesh
from reasonrank_jax.training.optim import learning_rate_schedule, make_optimizer
from reasonrank_jax.training.logprobs import next_token_logprobs
from reasonrank_jax.training.sft import BATCH_KEYS, StepSpec, jit_train_step, sft_loss_sums, train_step
from reasonrank_jax.training.state import TrainState, init_state, state_shardings

VOCAB = 96


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft_model")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # no parameter left at a constant init value
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


def make_batch(num: int, length: int, seed: int = 0) -> dict:
    """Right-padded rows with uneven prompt and response lengths; loss on the response only (loss_mask_bt, and the
    response window the loss reads: response_start_b, response_mask_br)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((num, length), np.int32)
    attention = np.zeros((num, length), np.int32)
    loss = np.zeros((num, length), np.int32)
    for i in range(num):
        n = int(rng.integers(length // 2, length + 1))
        prompt = int(rng.integers(2, n - 1))
        ids[i, :n] = rng.integers(1, VOCAB, n)
        attention[i, :n] = 1
        loss[i, prompt:n] = 1
    start, window = response_window(loss)
    return {"input_ids_bt": ids, "attention_mask_bt": attention, "loss_mask_bt": loss,
            "response_start_b": start, "response_mask_br": window}


def as_accum(batch: dict, accum: int) -> dict:
    return {k: batch[k].reshape(accum, batch[k].shape[0] // accum, *batch[k].shape[1:]) for k in BATCH_KEYS}


def torch_loss(model, batch):
    ids = torch.tensor(batch["input_ids_bt"], dtype=torch.long)
    logits = model(ids, attention_mask=torch.tensor(batch["attention_mask_bt"])).logits[:, :-1]
    mask = torch.tensor(batch["loss_mask_bt"][:, 1:], dtype=torch.float32)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none")
    return (nll * mask.reshape(-1)).sum() / mask.sum()


def _spec(cfg, lr=1e-3, total=10, **kw):
    optimizer, schedule = make_optimizer(lr, total, schedule="constant", clip_norm=0.0, **kw)
    return StepSpec(cfg=cfg, optimizer=optimizer, schedule=schedule)


def test_loss_and_one_update_match_transformers_and_torch_adamw(tiny_model):
    cfg, params = load_pretrained(tiny_model, dtype="float32")
    batch = make_batch(4, 24)
    spec = _spec(cfg, lr=1e-3, weight_decay=0.1)
    state = init_state(params, {}, spec.optimizer, jax.random.PRNGKey(0))
    new_state, metrics = jax.jit(lambda s, b: train_step(spec, s, b))(state, as_accum(batch, 1))

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    loss = torch_loss(model, batch)
    assert abs(float(metrics["loss"]) - float(loss)) < 1e-5
    assert float(metrics["tokens"]) == batch["loss_mask_bt"][:, 1:].sum()
    loss.backward()
    optimizer.step()
    reference = {name: p.detach().numpy() for name, p in model.named_parameters()}
    ours = new_state.params
    layer0 = lambda x: np.asarray(x[0])  # noqa: E731
    pairs = [("model.embed_tokens.weight", np.asarray(ours["embed"]["embedding"])),
             ("lm_head.weight", np.asarray(ours["lm_head"]["kernel"]).T),
             ("model.layers.0.self_attn.q_proj.weight", layer0(ours["layers"]["attn"]["q_proj"]["kernel"]).T),
             ("model.layers.0.self_attn.q_proj.bias", layer0(ours["layers"]["attn"]["q_proj"]["bias"])),
             ("model.layers.0.mlp.down_proj.weight", layer0(ours["layers"]["mlp"]["down_proj"]["kernel"]).T),
             ("model.layers.0.input_layernorm.weight", layer0(ours["layers"]["input_norm"]["scale"]))]
    for name, value in pairs:
        np.testing.assert_allclose(value, reference[name], atol=2e-6, err_msg=name)
    assert int(new_state.step) == 1


def test_schedule_warmup_then_cosine_to_zero():
    rate = learning_rate_schedule(1.0, total_steps=10, warmup_ratio=0.1, schedule="cosine")
    values = [float(rate(s)) for s in range(11)]
    # HF get_cosine_schedule_with_warmup: step 0 -> 0, warmup of ceil(1.0) = 1 step, then 0.5 (1 + cos(pi p))
    expected = [0.0] + [0.5 * (1 + np.cos(np.pi * (s - 1) / 9)) for s in range(1, 11)]
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert float(learning_rate_schedule(2.0, 10, 0.0, "constant")(7)) == 2.0


def test_accumulation_of_4_micro_batches_equals_one_batch_of_8(tiny_model):
    cfg, params = load_pretrained(tiny_model, dtype="float32")
    batch = make_batch(8, 20, seed=3)
    # Plain SGD with lr 1, so that the parameter change is the gradient itself (Adam's first step amplifies
    # rounding differences of near-zero gradients to the size of lr).
    spec = StepSpec(cfg=cfg, optimizer=optax.sgd(1.0), schedule=lambda count: 1.0)
    step = jax.jit(lambda s, b: train_step(spec, s, b))
    one, m1 = step(init_state(params, {}, spec.optimizer, jax.random.PRNGKey(0)), as_accum(batch, 1))
    four, m4 = step(init_state(params, {}, spec.optimizer, jax.random.PRNGKey(0)), as_accum(batch, 4))
    assert abs(float(m1["loss"]) - float(m4["loss"])) < 1e-6
    assert abs(float(m1["grad_norm"]) - float(m4["grad_norm"])) < 1e-6
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # The token mean is over the whole global batch: not the mean of the micro-batch means.
    micro_means = [float(sft_loss_sums(cfg, params, {k: v[i * 2:(i + 1) * 2] for k, v in batch.items()})[0]
                         / batch["loss_mask_bt"][i * 2:(i + 1) * 2].sum()) for i in range(4)]
    assert abs(np.mean(micro_means) - float(m1["loss"])) > 1e-4


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_one_device_and_a_2x2x2_mesh_give_the_same_losses(tiny_model, use_lora):
    cfg, params = load_pretrained(tiny_model, dtype="float32")
    base = jax.tree.map(np.asarray, params)
    losses = {}
    for shape in ((1, 1, 1), (2, 2, 2)):
        mesh = make_mesh(shape, jax.devices()[: int(np.prod(shape))])
        optimizer, schedule = make_optimizer(1e-2, 5, schedule="cosine", warmup_ratio=0.2)
        lora = init_lora(params, 4, ("q", "v", "down"), jax.random.PRNGKey(1)) if use_lora else {}
        spec = StepSpec(cfg=cfg, optimizer=optimizer, schedule=schedule,
                        lora_scale=lora_scale(8, 4) if use_lora else None)
        state = init_state(jax.tree.map(jnp.asarray, base), lora, optimizer, jax.random.PRNGKey(0))
        shardings = state_shardings(mesh, jax.eval_shape(lambda: state), optimizer)
        state = jax.device_put(state, shardings)
        step = jit_train_step(spec, shardings, mesh)
        losses[shape] = []
        for s in range(5):
            state, metrics = step(state, as_accum(make_batch(8, 16, seed=s % 2), 2))
            losses[shape].append(float(metrics["loss"]))
        if use_lora:  # the frozen base is bitwise unchanged
            for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(base)):
                assert np.array_equal(np.asarray(a), b)
    np.testing.assert_allclose(losses[(1, 1, 1)], losses[(2, 2, 2)], atol=1e-5)
    assert losses[(1, 1, 1)][4] < losses[(1, 1, 1)][0]  # the same batch again, after four updates


def test_fresh_lora_adapter_leaves_the_model_unchanged(tiny_model):
    cfg, params = load_pretrained(tiny_model, dtype="float32")
    lora = init_lora(params, 4, ("q", "k", "v", "o", "gate", "up", "down"), jax.random.PRNGKey(0))
    merged = merge_lora(params, lora, 2.0)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(merged)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert lora["layers"]["attn"]["q_proj"]["lora_a"].shape == (2, 32, 4)
    assert lora["layers"]["mlp"]["down_proj"]["lora_b"].shape == (2, 4, 32)


def _all_positions_loss_sums(cfg, params, batch):
    """The former formulation: the head on every position, the prompt and padding masked out afterwards."""
    logprobs_bt = next_token_logprobs(cfg, params, batch["input_ids_bt"], batch["attention_mask_bt"])
    mask_bt = jnp.asarray(batch["loss_mask_bt"], jnp.float32)
    return -(logprobs_bt * mask_bt).sum(), mask_bt.sum()


@pytest.mark.parametrize("width", [None, 16], ids=["bucket", "explicit"])
def test_response_window_loss_equals_the_all_positions_loss(tiny_model, width):
    """Uneven prompts and responses: a response filling the window (to the row's end, and mid-row), a window that
    runs past its row, a short one; values and gradients equal those of the head on every position."""
    cfg, params = load_pretrained(tiny_model, dtype="float32")
    length = 32
    rows = [(1, 32), (16, 32), (3, 19), (28, 30), (5, 12), (2, 25)] if width is None else \
        [(16, 32), (3, 19), (28, 30), (5, 12), (10, 26), (2, 9)]  # (prompt length, row length)
    rng = np.random.default_rng(7)
    ids = np.zeros((len(rows), length), np.int32)
    attention = np.zeros_like(ids)
    loss = np.zeros_like(ids)
    for i, (prompt, n) in enumerate(rows):
        ids[i, :n], attention[i, :n], loss[i, prompt:n] = rng.integers(1, VOCAB, n), 1, 1
    start, window = response_window(loss, width)
    assert window.shape[1] == (length - 1 if width is None else width)
    assert window.sum(axis=1).max() == window.shape[1]  # one response fills the window
    batch = {"input_ids_bt": ids, "attention_mask_bt": attention, "loss_mask_bt": loss,
             "response_start_b": start, "response_mask_br": window}
    new = jax.jit(lambda p: sft_loss_sums(cfg, p, batch))(params)
    old = jax.jit(lambda p: _all_positions_loss_sums(cfg, p, batch))(params)
    assert float(new[1]) == float(old[1]) == loss.sum()
    np.testing.assert_allclose(float(new[0]), float(old[0]), rtol=1e-6)
    grad_new = jax.jit(jax.grad(lambda p: sft_loss_sums(cfg, p, batch)[0]))(params)
    grad_old = jax.jit(jax.grad(lambda p: _all_positions_loss_sums(cfg, p, batch)[0]))(params)
    for a, b in zip(jax.tree.leaves(grad_new), jax.tree.leaves(grad_old)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
