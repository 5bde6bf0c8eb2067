"""The GPT in model.py: shapes, causality, loss, initialisation, optimizer groups, sampling."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import load_balancing_reference, tiny_gpt

from model import GPT, IGNORE_INDEX, GPTConfig, filter_top_k_top_p
from optim import configure_optimizers


def test_forward_shapes_and_loss_is_cross_entropy():
    model = tiny_gpt()
    idx = torch.randint(0, 32, (3, 16))
    targets = torch.randint(0, 32, (3, 16))
    logits, loss, _ = model(idx, targets=targets)
    assert logits.shape == (3, 16, 32)
    expected = F.cross_entropy(logits.reshape(-1, 32), targets.reshape(-1))
    assert torch.allclose(loss, expected)
    assert model(idx).loss is None, "without targets there is no loss"


def test_untrained_loss_is_about_ln_vocab_size():
    """Small init ⇒ near-uniform predictions ⇒ loss ≈ ln(V): the number a first log line should show."""
    model = tiny_gpt(vocab_size=1000)
    idx = torch.randint(0, 1000, (8, 16))
    loss = model(idx, targets=torch.randint(0, 1000, (8, 16))).loss
    assert abs(loss.item() - math.log(1000)) < 0.1


def test_attention_is_causal():
    """Changing token t must not change the logits at positions before t."""
    model = tiny_gpt().eval()
    idx = torch.randint(0, 32, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 32
    a = model(idx).logits
    b = model(changed).logits
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_padding_labels_are_ignored():
    model = tiny_gpt()
    idx = torch.randint(0, 32, (2, 16))
    targets = torch.randint(0, 32, (2, 16))
    padded = targets.clone()
    padded[:, 8:] = -100
    logits, loss, _ = model(idx, targets=padded)
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
    opt = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu")
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
    # The position table is a lookup; the token embedding, tied to lm_head, is a matmul.
    assert model.num_params() == sum(p.numel() for p in model.parameters()) - c.block_size * c.n_embd
    untied = recipe_gpt(tie_weights=False)  # then the token embedding is a lookup too
    lookups = c.vocab_size * c.n_embd + c.block_size * c.n_embd
    assert untied.num_params() == sum(p.numel() for p in untied.parameters()) - lookups


def test_generate_extends_by_max_new_tokens():
    model = tiny_gpt().eval()
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), max_new_tokens=20)
    assert out.shape == (2, 23), "context longer than block_size must be cropped, not fail"


def test_top_k_sampling_only_picks_the_k_most_likely_tokens():
    model = tiny_gpt().eval()
    context = torch.randint(0, 32, (1, 5))
    logits = model(context).logits
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


def test_moe_returns_the_lm_loss_and_the_aux_loss_apart_and_learns():
    model = moe_gpt()
    x = torch.randint(0, 32, (8, 16))
    y = torch.roll(x, -1, dims=1)
    out, aux = load_balancing_reference(model, x, y)
    torch.testing.assert_close(out.aux_loss, aux)
    model.eval()
    assert model(x, targets=y).loss.item() == pytest.approx(out.loss.item(), rel=1e-6), (
        "the LM loss is the same in training and evaluation mode: the auxiliary loss is apart"
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        _, loss, aux_loss = model(x, targets=y)
        first = first or loss.item()
        (loss + aux_loss).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < first - 1.0, f"MoE training should lower the loss ({first:.2f} → {loss.item():.2f})"


def test_moe_routing_statistics_skip_padding():
    """In documents mode most positions of a short document are padding: balancing them
    would teach the router nothing about text."""
    model = moe_gpt()
    x = torch.randint(0, 32, (4, 16))
    y = torch.roll(x, -1, dims=1)
    y[:3, 5:] = IGNORE_INDEX
    out, aux = load_balancing_reference(model, x, y)
    torch.testing.assert_close(out.aux_loss, aux)
    assert out.aux_loss.item() != pytest.approx(model(x, targets=torch.roll(x, -1, dims=1)).aux_loss.item())
    assert model(x).aux_loss.item() > 0, "without targets every position counts"
    assert tiny_gpt()(x).aux_loss.item() == 0.0, "a model without MoE has no auxiliary loss"


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


# --- The modern recipe: each piece against an independent reference -------------------------

MODERN = dict(position="rope", norm="rms", mlp="relu2", qk_norm=True, zero_init=True, tie_weights=False)


def recipe_gpt(seed=0, **changes) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, **changes))


@pytest.mark.parametrize("changes", [MODERN, {**MODERN, "mlp": "swiglu"}], ids=["relu2", "swiglu"])
def test_a_modern_model_is_causal_and_learns(changes):
    model = recipe_gpt(**changes)
    for p in model.parameters():  # away from the zero init, so that every path carries signal
        p.data.add_(0.02 * torch.randn_like(p))
    model.eval()
    idx = torch.randint(0, 32, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 32
    a, b = model(idx).logits, model(changed).logits
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6), "a token must not change the logits before it"
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    model.train()
    optimizer = configure_optimizers(model, 0.0, 3e-3, (0.9, 0.95), "cpu", muon_lr_scale=10.0)
    batch = torch.randint(0, 32, (4, 17))
    x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    losses = []
    for _ in range(30):
        loss = model(x, targets=y).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (
        f"the model should memorise one batch: {losses[0]:.2f} -> {losses[-1]:.2f}"
    )


def test_rotary_scores_depend_only_on_the_distance():
    """The same query and key vectors at every position: after rotation, the score of
    positions (m, n) equals that of (m + s, n + s), and rotation keeps the length."""
    from model import Rotary

    rotary = Rotary(head_dim=8, max_len=12)
    q = torch.randn(8).expand(1, 1, 12, 8)
    k = torch.randn(8).expand(1, 1, 12, 8)
    rq, rk = rotary(q)[0, 0], rotary(k)[0, 0]
    scores = rq @ rk.T  # (12, 12)
    for shift in (1, 5):
        assert torch.allclose(scores[:-shift, :-shift], scores[shift:, shift:], atol=1e-5)
    assert torch.allclose(rq.norm(dim=-1), q[0, 0].norm(dim=-1), atol=1e-5)
    assert not torch.allclose(scores[0, 1], scores[0, 2]), "different distances, different scores"


def test_rope_models_have_no_position_table_and_rms_norms():
    model = recipe_gpt(**MODERN)
    assert "wpe" not in model.transformer
    assert isinstance(model.transformer.h[0].ln_1, torch.nn.RMSNorm)
    assert not any(name.endswith(".bias") for name, _ in model.named_parameters())


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    model = recipe_gpt(qk_norm=True).eval()
    idx = torch.randint(0, 32, (2, 16))
    before = model(idx).logits
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:64] *= 7.0  # the query and key rows (n_embd = 32 each)
    assert torch.allclose(model(idx).logits, before, atol=1e-4)


def test_relu2_and_swiglu_compute_what_they_say():
    from model import MLP, SwiGLU

    config = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)
    x = torch.randn(2, 5, 32)
    relu2 = MLP(GPTConfig(**{**config.to_dict(), "mlp": "relu2"}))
    assert torch.allclose(relu2(x), relu2.c_proj(F.relu(relu2.c_fc(x)) ** 2), atol=1e-6)
    swiglu = SwiGLU(config)
    hidden = swiglu.c_proj.in_features
    w1, w3 = swiglu.c_fc.weight[:hidden], swiglu.c_fc.weight[hidden:]
    assert torch.allclose(swiglu(x), swiglu.c_proj(F.silu(x @ w1.T) * (x @ w3.T)), atol=1e-6)
    n_gelu = sum(p.numel() for p in MLP(config).parameters())
    n_swiglu = sum(p.numel() for p in swiglu.parameters())
    assert abs(n_swiglu / n_gelu - 1) < 0.1, "SwiGLU's 8/3 hidden size keeps the parameter count of a 4x MLP"


def test_zero_init_blocks_start_as_the_identity_and_untied_heads_are_their_own():
    model = recipe_gpt(zero_init=True, tie_weights=False).eval()
    idx = torch.randint(0, 32, (2, 16))
    tr = model.transformer
    skip_blocks = model.lm_head(tr.ln_f(tr.wte(idx) + tr.wpe(torch.arange(16))))
    assert torch.allclose(model(idx).logits, skip_blocks, atol=1e-6), (
        "every block adds zero at initialisation"
    )
    assert model.lm_head.weight is not tr.wte.weight
    matmul_weights = (
        sum(p.numel() for p in model.parameters()) - tr.wte.weight.numel() - tr.wpe.weight.numel()
    )
    assert model.num_params() == matmul_weights, "untied, the token embedding is a lookup, not a matmul"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(32, 96), (128, 32)], ids=["wide", "tall"])
def test_orthogonalize_sets_every_singular_value_near_one(shape, dtype):
    from optim import orthogonalize

    torch.manual_seed(0)
    G = torch.randn(shape) @ torch.diag(torch.logspace(-1, 1, shape[1]))  # singular values 100x apart
    update = orthogonalize(G, dtype=dtype)
    singular = torch.linalg.svdvals(update)
    assert update.shape == G.shape and singular.min() > 0.5 and singular.max() < 1.5, singular
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cosine = (update * (U @ Vh)).sum() / (update.norm() * (U @ Vh).norm())
    assert cosine > 0.95, f"the update should point along U Vᵀ of the SVD (cosine {cosine:.3f})"


def test_muon_groups_hidden_matrices_and_its_adamw_half_matches_torch():
    model = recipe_gpt(**MODERN)
    opt = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", muon_lr_scale=20.0)
    muon, others, vectors = opt.param_groups
    hidden = {id(p) for block in model.transformer.h for p in block.parameters() if p.dim() == 2}
    assert {id(p) for p in muon["params"]} == hidden and muon["lr_scale"] == 20.0
    assert {id(p) for p in others["params"]} == {id(model.transformer.wte.weight), id(model.lm_head.weight)}
    assert all(p.dim() < 2 for p in vectors["params"]) and vectors["weight_decay"] == 0.0
    assert opt.ns_dtype == torch.float32, "a float32 run orthogonalises in float32"
    bf16_run = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", 20.0, amp_dtype=torch.bfloat16)
    assert bf16_run.ns_dtype == torch.bfloat16, "a bfloat16 run orthogonalises in bfloat16, where it is fast"


def test_the_adamw_half_of_muon_matches_torch_adamw():
    from optim import MuonAdamW

    ours, theirs = torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(6, 5))
    theirs.data.copy_(ours.data)
    muon = MuonAdamW([{"params": [ours], "use_muon": False, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95))
    adamw = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        grad = torch.randn(6, 5)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        muon.step()
        adamw.step()
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_muon_steps_along_the_orthogonalised_nesterov_momentum():
    from optim import MuonAdamW, orthogonalize

    weight = torch.nn.Parameter(torch.randn(8, 16))
    opt = MuonAdamW([{"params": [weight], "use_muon": True}], lr=0.1)
    grads = [torch.randn(8, 16) for _ in range(2)]
    momentum = torch.zeros(8, 16)
    expected = weight.detach().clone()
    for g in grads:  # the update, written out: m = 0.95 m + 0.05 g; step along g + 0.95 (m - g)
        momentum = 0.95 * momentum + 0.05 * g
        expected -= 0.1 * orthogonalize(g + 0.95 * (momentum - g))
        weight.grad = g.clone()
        opt.step()
    assert torch.allclose(weight, expected, atol=1e-5)


def test_explicit_attention_equals_the_fused_kernel():
    from model import explicit_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(explicit_attention(q, k, v, dropout=0.0), expected, atol=1e-5), (
        "softmax(q kᵀ / sqrt(head_size)) v with the future masked out should equal the fused kernel"
    )


def test_bfloat16_autocast_on_cpu_gives_the_float32_loss():
    model = tiny_gpt()
    idx = torch.randint(0, model.config.vocab_size, (4, 16))
    loss32 = model(idx, idx).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = model(idx, idx).loss
    assert abs(loss16.item() - loss32.item()) < 0.01 * loss32.item(), (loss16.item(), loss32.item())


def test_orthogonalize_treats_a_stack_as_separate_matrices():
    from optim import orthogonalize

    torch.manual_seed(0)
    stack = torch.randn(3, 16, 48)
    one_by_one = torch.stack([orthogonalize(G) for G in stack])
    assert torch.allclose(orthogonalize(stack), one_by_one, atol=1e-5), (
        "each matrix of a stack is orthogonalised on its own (its own norm, its own X Xᵀ)"
    )


def test_muon_updates_same_shape_matrices_as_if_each_were_alone():
    from optim import MuonAdamW

    torch.manual_seed(0)
    shapes = [(12, 4), (12, 4), (4, 4)]
    together = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in together]
    opt_together = MuonAdamW([{"params": together, "use_muon": True}], lr=0.1)
    opts_alone = [MuonAdamW([{"params": [p], "use_muon": True}], lr=0.1) for p in alone]
    for _ in range(3):
        for a, b in zip(together, alone, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt_together.step()
        for opt in opts_alone:
            opt.step()
    for a, b in zip(together, alone, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def saved_activation_bytes(model: GPT, x: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    """The bytes autograd keeps for the backward pass of one training forward, and the gradients."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, targets=x).loss
    loss.backward()
    return sum(saved), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_activation_checkpointing_gives_the_same_gradients_and_keeps_less():
    """Recomputing each Block in backward (with dropout on: the masks must be drawn again
    the same) changes no gradient, and autograd keeps far less for backward."""
    model = tiny_gpt(dropout=0.1)
    model.train()
    x = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    stored, stored_grads = saved_activation_bytes(model, x)
    model.activation_checkpointing = True
    torch.manual_seed(1)
    recomputed, recomputed_grads = saved_activation_bytes(model, x)
    for name, grad in stored_grads.items():
        assert torch.allclose(grad, recomputed_grads[name], rtol=0, atol=1e-7), (
            f"{name}: activation checkpointing changed the gradient"
        )
    assert recomputed < 0.6 * stored, (
        f"with activation checkpointing autograd kept {recomputed:,} bytes, without {stored:,}: "
        "the Blocks' activations should not be stored"
    )


def test_an_expert_that_gets_no_token_still_gets_a_zero_gradient():
    """FSDP reduces every weight's gradient over the processes: none may be missing."""
    from model import MoE

    moe = MoE(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16, use_moe=True))
    with torch.no_grad():  # a router that sends every (all-ones) token to experts 0 and 1
        moe.router.weight.zero_()
        moe.router.weight[:2] = 1.0
    moe(torch.ones(1, 8, 16)).sum().backward()
    for name, p in moe.experts[-1].named_parameters():
        assert p.grad is not None, f"the unused expert's {name} got no gradient"
        assert torch.count_nonzero(p.grad) == 0, f"the unused expert's {name} got a non-zero gradient"
