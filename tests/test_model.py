"""The GPT in model.py: shapes, causality, loss, initialisation, optimizer groups, sampling."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_gpt

from model import GPT, GPTConfig, filter_top_k_top_p


def test_forward_shapes_and_loss_is_cross_entropy():
    model = tiny_gpt()
    idx = torch.randint(0, 32, (3, 16))
    targets = torch.randint(0, 32, (3, 16))
    logits, loss = model(idx, targets=targets)
    assert logits.shape == (3, 16, 32)
    expected = F.cross_entropy(logits.reshape(-1, 32), targets.reshape(-1))
    assert torch.allclose(loss, expected)
    assert model(idx)[1] is None, "without targets there is no loss"


def test_untrained_loss_is_about_ln_vocab_size():
    """Small init ⇒ near-uniform predictions ⇒ loss ≈ ln(V): the number a first log line should show."""
    model = tiny_gpt(vocab_size=1000)
    idx = torch.randint(0, 1000, (8, 16))
    _, loss = model(idx, targets=torch.randint(0, 1000, (8, 16)))
    assert abs(loss.item() - math.log(1000)) < 0.1


def test_attention_is_causal():
    """Changing token t must not change the logits at positions before t."""
    model = tiny_gpt().eval()
    idx = torch.randint(0, 32, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 32
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_padding_labels_are_ignored():
    model = tiny_gpt()
    idx = torch.randint(0, 32, (2, 16))
    targets = torch.randint(0, 32, (2, 16))
    padded = targets.clone()
    padded[:, 8:] = -100
    logits, loss = model(idx, targets=padded)
    expected = F.cross_entropy(logits[:, :8].reshape(-1, 32), targets[:, :8].reshape(-1))
    assert torch.allclose(loss, expected)


def test_weight_tying_and_scaled_init():
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=4, n_head=4, n_embd=256))
    assert model.lm_head.weight is model.transformer.wte.weight, "lm_head must share wte's weight"
    block = model.transformer.h[0]
    assert abs(block.mlp.c_fc.weight.std().item() - 0.02) < 0.002
    residual_std = 0.02 / math.sqrt(2 * 4)  # the projections that write into the residual stream
    assert abs(block.mlp.c_proj.weight.std().item() - residual_std) < 0.001
    assert abs(block.attn.c_proj.weight.std().item() - residual_std) < 0.001


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt(block_size=8)(torch.zeros(1, 9, dtype=torch.long))


def test_optimizer_decays_only_matrices():
    model = tiny_gpt()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    n_grouped = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_grouped == sum(p.numel() for p in model.parameters()), "every parameter is optimized once"


def test_flops_per_token_formula():
    model = tiny_gpt()
    c = model.config
    assert model.flops_per_token() == 6 * model.num_params() + 12 * c.n_layer * c.block_size * c.n_embd
    assert model.num_params() == sum(p.numel() for p in model.parameters()) - c.block_size * c.n_embd


def test_generate_extends_by_max_new_tokens():
    model = tiny_gpt().eval()
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), max_new_tokens=20)
    assert out.shape == (2, 23), "context longer than block_size must be cropped, not fail"


def test_top_k_sampling_only_picks_the_k_most_likely_tokens():
    model = tiny_gpt().eval()
    context = torch.randint(0, 32, (1, 5))
    logits, _ = model(context)
    allowed = set(torch.topk(logits[0, -1], 3).indices.tolist())
    torch.manual_seed(0)
    out = model.generate(context.repeat(500, 1), max_new_tokens=1, top_k=3)
    picked = set(out[:, -1].tolist())
    assert picked <= allowed, f"top_k=3 sampled tokens {picked - allowed} outside the top 3"
    assert len(picked) > 1, "top_k=3 with temperature 1 should not always pick the same token"


def test_temperature_zero_and_top_k_one_are_greedy():
    model = tiny_gpt().eval()
    context = torch.randint(0, 32, (1, 5))
    greedy = model.generate(context, 10, temperature=0)
    assert torch.equal(model.generate(context, 10, top_k=1), greedy)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = filter_top_k_top_p(probs.log(), top_p=0.75).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_top_k_top_p(probs.log(), top_p=0.1).isfinite()
    assert kept.tolist() == [[True, False, False, False]], "the most likely token is always kept"


# --- mixture of experts (--use_moe) -------------------------------------------------------


def moe_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, use_moe=True))


def test_moe_load_balancing_loss_is_minimal_for_a_uniform_router():
    model = moe_gpt()
    moe = model.transformer.h[0].mlp
    x = torch.randn(4, 16, 32)
    torch.nn.init.zeros_(moe.router.weight)  # every expert equally likely
    moe(x)
    assert moe.aux_loss.item() == pytest.approx(1.0), "uniform routing gives the minimum, 1"
    with torch.no_grad():
        moe.router.weight[0] = 5 * x.reshape(-1, 32).mean(0)  # a router that prefers expert 0
    moe(x)
    assert moe.aux_loss.item() > 1.2, "an unbalanced router must pay a larger auxiliary loss"


def test_moe_mixes_the_chosen_experts_by_router_weight():
    moe = moe_gpt().transformer.h[0].mlp
    x = torch.randn(1, 3, 32)
    probs = torch.softmax(moe.router(x.view(-1, 32)), dim=-1)
    top, chosen = probs.topk(2, dim=-1)
    expected = torch.stack([
        sum(top[t, j] / top[t].sum() * moe.experts[chosen[t, j]](x[0, t]) for j in range(2)) for t in range(3)
    ])  # fmt: skip
    torch.testing.assert_close(moe(x)[0], expected, atol=1e-6, rtol=1e-5)


def test_moe_adds_the_aux_loss_in_training_only_and_learns():
    model = moe_gpt()
    x = torch.randint(0, 32, (8, 16))
    y = torch.roll(x, -1, dims=1)
    train_loss = model(x, targets=y)[1]
    model.eval()
    eval_loss = model(x, targets=y)[1]
    aux = sum(block.mlp.aux_loss for block in model.transformer.h)
    assert train_loss.item() == pytest.approx(eval_loss.item() + 0.01 * aux.item(), rel=1e-4)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        _, loss = model(x, targets=y)
        first = first or loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < first - 1.0, f"MoE training should lower the loss ({first:.2f} → {loss.item():.2f})"


def test_moe_flops_count_only_the_experts_a_token_uses():
    dense, moe = tiny_gpt(), moe_gpt()  # the same sizes, one MLP vs 4 experts per block
    expert = sum(p.numel() for p in moe.transformer.h[0].mlp.experts[0].parameters())
    router = moe.transformer.h[0].mlp.router.weight.numel()
    assert moe.num_params() - dense.num_params() == 2 * (3 * expert + router)
    # A token runs 2 experts where the dense model runs 1 MLP, plus the router, in each of 2 layers.
    assert moe.flops_per_token() - dense.flops_per_token() == 6 * 2 * (expert + router)


def test_sampling_edge_cases_are_handled_not_crashed():
    model = tiny_gpt().eval()
    idx = torch.zeros((2, 1), dtype=torch.long)
    torch.manual_seed(0)
    greedy = model.generate(idx, 5, temperature=0)
    assert torch.equal(model.generate(idx, 5, temperature=1.0, top_p=0.0), greedy), (
        "top_p=0 keeps only the most likely token: the same as greedy decoding"
    )
    assert model.generate(idx, 5, temperature=1.0, top_k=0).shape == (2, 6), "top_k=0 means no top-k filter"
    with pytest.raises(ValueError, match="temperature must be 0 .greedy. or positive, got -1"):
        model.generate(idx, 5, temperature=-1.0)


def test_filter_keeps_the_most_likely_token_whatever_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    for top_p in (0.0, -1.0, 1e-9):
        kept = filter_top_k_top_p(logits, top_p=top_p)
        assert torch.isfinite(kept).tolist() == [[False, True, False, False]]
    assert torch.equal(filter_top_k_top_p(logits, top_k=0), logits)
    assert torch.equal(filter_top_k_top_p(logits, top_k=-3), logits)
