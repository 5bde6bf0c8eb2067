"""The GPT that this course pretrains: a decoder-only Transformer, written to be read.

It is given to you, not an exercise. Read it once top to bottom: every piece of
next-token prediction (下一个词预测) that the training code relies on lives here.

    tokens (B, T) ──► token + position embeddings ──► n_layer × Block ──► LayerNorm
                  ──► lm_head (tied to the token embedding) ──► logits (B, T, vocab)

Each Block is pre-norm: x + Attention(LN(x)), then x + MLP(LN(x)). The attention is
causal: position t only sees positions ≤ t, so the logits at t are a prediction of
token t+1 made from the prefix alone. That is what lets one forward pass train on
T predictions at once.

The block is GPT-2's (2019, as in nanoGPT). What replaced its pieces since is here
too, one switch each in GPTConfig: rotary position embeddings, RMSNorm, squared ReLU
and SwiGLU, QK-norm, zero-initialised projections, an untied lm_head; and the Muon
optimizer for the blocks' matrices. Measured at equal wall time at this course's
scale (tools/ablation.py; tools/results/README.md has the table), the block changes
cost time per step and lose within the main job's budget on a CPU, so the defaults
stay GPT-2's.
What updates the weights (AdamW, and Muon for the blocks' matrices, the default) is
in optim.py.

Shapes in comments: B = batch size, T = sequence length, C = embedding size (n_embd),
V = vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # label value the loss skips (padding); PyTorch's own default


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE vocabulary
    block_size: int = 256  # the longest context the model can see
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm; GPT-2 had them, most modern LLMs drop them
    # Mixture of experts (MiniMind's --use_moe): each block's MLP becomes n_experts MLPs,
    # of which a router picks experts_per_token for every token.
    use_moe: bool = False
    n_experts: int = 4
    experts_per_token: int = 2
    aux_loss_weight: float = 0.01  # weight of the load-balancing loss added to the LM loss
    # The block's recipe: GPT-2's 2019 pieces, or the ones that replaced them since.
    position: str = "learned"  # "learned": GPT-2's position table; "rope": rotary embeddings
    norm: str = "layer"  # "layer": LayerNorm; "rms": RMSNorm
    mlp: str = "gelu"  # "gelu": GPT-2's MLP; "relu2": squared ReLU; "swiglu": gated SiLU
    qk_norm: bool = False  # RMS-normalise queries and keys before attention
    zero_init: bool = False  # output projections start at zero (each block starts as the identity)
    tie_weights: bool = True  # lm_head shares the token embedding's matrix

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "each head gets n_embd // n_head dimensions"
            )
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


CHOICES = {"position": ("learned", "rope"), "norm": ("layer", "rms"), "mlp": ("gelu", "relu2", "swiglu")}


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    """LayerNorm (GPT-2) subtracts the mean, divides by the standard deviation, and adds a
    learned bias. RMSNorm (LLaMA, MiniMind) only divides by the root mean square: one
    statistic fewer, no bias, and in practice just as good."""
    return nn.RMSNorm(dim) if config.norm == "rms" else nn.LayerNorm(dim, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embeddings (RoPE; Su et al., 2021; used by LLaMA and MiniMind).

    Instead of adding a learned position vector to the input (GPT-2), rotate each pair
    of query/key dimensions by an angle proportional to the position, at a different
    frequency per pair. The dot product of a query at position m and a key at n then
    depends only on their distance m - n: attention sees relative positions, and there
    is no position table to learn.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        self.base = base
        # Buffers move with the model to its device; not saved (they are computed).
        self.register_buffer("cos", torch.empty(max_len, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(max_len, head_dim // 2), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Compute the tables, on the CPU whatever the buffers' device (the same numbers
        everywhere); again once a model built on the meta device has memory
        (course.distributed.build_sharded)."""
        max_len, pairs = self.cos.shape
        inv_freq = self.base ** (-torch.arange(pairs, dtype=torch.float32, device="cpu") / pairs)  # (hd/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32, device="cpu"), inv_freq)  # (T, hd/2)
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n_head, T, head_dim), rotated pair by pair (first half with second half)."""
        T = x.size(-2)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position attends only to itself and the past."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # One matmul computes queries, keys and values for all heads at once.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        head_dim = config.n_embd // config.n_head
        self.rotary = Rotary(head_dim, config.block_size) if config.position == "rope" else None
        # QK-norm: queries and keys of unit RMS keep the attention logits in a sane range
        # whatever the weights grow to (no softmax saturation), which allows higher LRs.
        self.qk_norm = config.qk_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): heads become a batch dimension.
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            y = explicit_attention(q, k, v, dropout)
        else:  # PyTorch picks a fused kernel (FlashAttention on recent GPUs) for us.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(head_size)) v with the upper triangle masked out, written out.

    F.scaled_dot_product_attention computes the same in one fused kernel, but PyTorch's
    CPU kernel is slow in bfloat16, its backward above all (tools/results/README.md has
    the figures), while these two matmuls run on the CPU's bfloat16 matrix units. The
    T×T matrix it builds is small at a CPU's context lengths.
    """
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, n_head, T, T)
    # -inf above the diagonal: after the softmax, no weight on the future.
    future = torch.full((T, T), float("-inf"), dtype=scores.dtype, device=q.device).triu(diagonal=1)
    weights = (scores + future).softmax(dim=-1)  # computed in float32 even for bfloat16 scores
    weights = F.dropout(weights, dropout, training=dropout > 0)
    return weights @ v


class MLP(nn.Module):
    """The position-wise feed-forward network: expand 4×, a nonlinearity, project back.

    GPT-2 uses GELU. Squared ReLU, relu(x)², is cheaper and trained faster in the
    modded-nanogpt speedrun (So et al., 2021, "Primer").
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = nn.GELU() if config.mlp == "gelu" else ReLU2()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class ReLU2(nn.Module):
    """Squared ReLU: zero for negative inputs, x² for positive ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class SwiGLU(nn.Module):
    """The gated feed-forward of LLaMA and MiniMind (Shazeer, 2020): silu(x W1) ⊙ (x W3),
    projected back by W2. A gate decides, per hidden unit, how much of the value passes.
    Three matrices instead of two, so the hidden size is 8/3·C (not 4·C) for the same
    number of parameters."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = 8 * math.ceil(config.n_embd / 3)  # 8/3·C, rounded up to a multiple of 8
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)  # W1 and W3 in one matmul
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.c_fc(x).chunk(2, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * value))


def make_mlp(config: GPTConfig) -> nn.Module:
    return SwiGLU(config) if config.mlp == "swiglu" else MLP(config)


class MoE(nn.Module):
    """A mixture-of-experts feed-forward: n_experts MLPs and a router.

    For each token the router scores the experts; the top experts_per_token run and
    their outputs are mixed with the router's (renormalised) probabilities. More
    parameters, about the same compute per token. Left alone, a router tends to send
    everything to a few experts; the load-balancing loss of the Switch Transformer,
    n_experts · Σ_e f_e · P_e (f_e: share of routing slots given to expert e, P_e: its
    mean router probability), is smallest (1) when routing is uniform. The model returns
    it beside the LM loss, and training adds the two, as MiniMind's train_pretrain.py
    does (loss = res.loss + res.aux_loss). Only real tokens count: padding is routed
    too, but balancing it would teach the router nothing about text.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.top_k = config.experts_per_token
        self.router = nn.Linear(config.n_embd, config.n_experts, bias=False)
        self.experts = nn.ModuleList([make_mlp(config) for _ in range(config.n_experts)])
        self.aux_loss = torch.zeros(())  # set by every forward

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C). real: (B, T), True where a position has a real target (None: all)."""
        B, T, C = x.size()
        tokens = x.view(-1, C)  # (N, C), N = B·T
        probs = F.softmax(self.router(tokens), dim=-1)  # (N, n_experts)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k) each
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_idx, slot = (chosen == e).nonzero(as_tuple=True)  # the tokens routed to expert e
            # An expert that got no token still runs (on none), so its weights get a zero
            # gradient rather than none: every process then has a gradient for every
            # weight, which FSDP's reduce-scatter needs.
            expert_out = expert(tokens[token_idx]) * weights[token_idx, slot, None]
            # Under autocast the expert computes in 16 bits; the residual stream stays float32.
            out.index_add_(0, token_idx, expert_out.to(out.dtype))
        if real is not None:  # the statistics of real tokens only
            probs, chosen = probs[real.view(-1)], chosen[real.view(-1)]
        n_experts = len(self.experts)
        share = torch.bincount(chosen.flatten(), minlength=n_experts).to(probs.dtype) / chosen.numel()
        self.aux_loss = n_experts * (share * probs.mean(dim=0)).sum()
        return out.view(B, T, C)


class Block(nn.Module):
    """One Transformer layer: attention mixes positions, the MLP transforms each one."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MoE(config) if config.use_moe else make_mlp(config)

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """real: where the targets are real (not padding), for a router's statistics."""
        # Pre-norm residual: the residual stream x is never normalised itself, which
        # keeps gradients flowing straight through deep stacks.
        x = x + self.attn(self.ln_1(x))
        h = self.ln_2(x)
        x = x + (self.mlp(h, real) if isinstance(self.mlp, MoE) else self.mlp(h))
        return x


class GPTOutput(NamedTuple):
    """What GPT.forward returns; it unpacks like a tuple: logits, loss, aux_loss = model(x, y)."""

    logits: torch.Tensor  # (B, T, vocab_size): a score for every possible next token
    loss: torch.Tensor | None  # the LM loss, mean cross-entropy per real target (nats); None without targets
    aux_loss: torch.Tensor  # the routers' load-balancing loss, already weighted; 0 without MoE


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))  # token embedding
        if config.position == "learned":  # with RoPE, attention itself knows positions
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)  # position embedding
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Recompute each Block's activations in the backward pass instead of storing them
        # (the training script's --activation_checkpointing 1): not part of the architecture.
        self.activation_checkpointing = False
        if config.tie_weights:
            # Weight tying: the matrix that turns a token into a vector also turns the
            # final vector back into token scores. Saves V×C parameters (Press & Wolf,
            # 2017); untied, the two can specialise, which modern models prefer.
            self.transformer.wte.weight = self.lm_head.weight

        for param, init in self.initialisation():
            init(param)

    def initialisation(self) -> Iterator[tuple[nn.Parameter, Callable[[torch.Tensor], object]]]:
        """Every step of the initialisation, in order: (parameter, its in-place init).
        (Before these, each layer drew its PyTorch default as it was built.) An FSDP run
        replays both, one parameter at a time, from the same generator, so its shards
        hold exactly these weights (course.distributed.build_sharded)."""
        normal = partial(nn.init.normal_, mean=0.0, std=0.02)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                yield module.weight, normal
            if isinstance(module, nn.Linear) and module.bias is not None:
                yield module.bias, nn.init.zeros_
        # The projections that write into the residual stream (c_proj): GPT-2 shrinks
        # them by 1/sqrt(2 * n_layer), because each block adds two of them and the
        # stream's variance grows with depth. Zero-initialised (modded-nanogpt), each
        # block starts as the identity and learns what to add.
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        residual = nn.init.zeros_ if self.config.zero_init else partial(nn.init.normal_, mean=0.0, std=std)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                yield param, residual

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
        """Score every possible next token at every position.

        idx: (B, T) token ids. targets: (B, T) the next token at each position, or
        IGNORE_INDEX (-100) where no loss should be taken (padding).
        Returns the logits (B, T, V); when targets are given, the language-model loss:
        the mean cross-entropy -log P(target | prefix) over the counted positions, in
        nats per token, the number evaluation reports; and, with mixture-of-experts
        MLPs, the routers' load-balancing loss (weighted by aux_loss_weight; a zero
        otherwise), which training adds to the LM loss and evaluation leaves out.
        """
        B, T = idx.size()
        if self.config.block_size < T:
            raise ValueError(f"sequence length {T} exceeds the model's block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device))  # (T, C), broadcast
        x = self.transformer.drop(x)
        real = None if targets is None else targets != IGNORE_INDEX  # padding is not text
        for block in self.transformer.h:
            if self.activation_checkpointing and self.training:
                # Activation checkpointing: keep only the Block's input; backward runs the
                # Block again to get what it needs (same dropout masks: the RNG state is
                # saved). About one more forward pass of compute for a Block's worth of
                # activations per layer less memory.
                x = checkpoint(block, x, real, use_reentrant=False)
            else:
                x = block(x, real)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=IGNORE_INDEX
            )
        aux_loss = torch.zeros((), device=idx.device)
        if self.config.use_moe:
            aux_loss = self.config.aux_loss_weight * sum(block.mlp.aux_loss for block in self.transformer.h)
        return GPTOutput(logits, loss, aux_loss)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. The embedding tables are left out by default: they are
        lookups, not compute. A token embedding tied to lm_head stays in, because its
        weights do take part in a matmul at every position."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N for the weight matmuls plus the attention term.

        Forward is 2 FLOPs per weight per token (one multiply, one add), backward twice
        that, hence 6N. Attention scores (q·k and the weighted sum of v) add
        2 · 2 · n_layer · T · C forward, so 12 · n_layer · T · C for training
        (PaLM paper, appendix B). Dividing achieved FLOPs/s by the hardware's peak
        gives the model FLOPs utilisation (MFU).
        """
        T = seq_len or self.config.block_size
        n_active = self.num_params()
        if self.config.use_moe:  # only experts_per_token of the n_experts MLPs run for a token
            expert = sum(p.numel() for p in self.transformer.h[0].mlp.experts[0].parameters())
            idle = self.config.n_experts - self.config.experts_per_token
            n_active -= self.config.n_layer * idle * expert
        return 6 * n_active + 12 * self.config.n_layer * T * self.config.n_embd

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> torch.Tensor:
        """Extend each sequence in idx (B, T) by max_new_tokens sampled tokens.

        temperature < 1 sharpens the distribution, > 1 flattens it, 0 means greedy.
        top_k keeps only the k most likely tokens (None or 0: all); top_p keeps the
        smallest set of tokens whose probabilities add up to at least p ("nucleus"
        sampling; the most likely token is always kept, so top_p=0 is greedy too).
        Call model.eval() first if the model has dropout.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or positive, got {temperature}")
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]  # the model cannot see further back
            logits = self(context).logits
            logits = logits[:, -1, :]  # (B, V): only the last position predicts new text
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = filter_top_k_top_p(logits / temperature, top_k, top_p)
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, next_token), dim=1)
        return idx


def filter_top_k_top_p(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set the logits of tokens outside the top-k / top-p set to -inf, so softmax gives
    them probability zero. logits: (B, V). top_k None or <= 0 and top_p None or >= 1
    filter nothing; the most likely token always survives."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p, but never
        # the most likely one (with top_p <= 0 nothing would be left to sample from).
        mass_above = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_above >= top_p
        drop_sorted[:, 0] = False
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
