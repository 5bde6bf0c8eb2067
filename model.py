"""The GPT that this course pretrains: a decoder-only Transformer, written to be read.

It is given to you, not an exercise. Read it once top to bottom: every piece of
next-token prediction (下一个词预测) that the training code relies on lives here.

    tokens (B, T) ──► token + position embeddings ──► n_layer × Block ──► LayerNorm
                  ──► lm_head (tied to the token embedding) ──► logits (B, T, vocab)

Each Block is pre-norm: x + Attention(LN(x)), then x + MLP(LN(x)). The attention is
causal: position t only sees positions ≤ t, so the logits at t are a prediction of
token t+1 made from the prefix alone. That is what lets one forward pass train on
T predictions at once.

Shapes in comments: B = batch size, T = sequence length, C = embedding size (n_embd),
V = vocabulary size.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value the loss skips (padding); PyTorch's own default


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE vocabulary
    block_size: int = 256  # the longest context the model can see (its position table)
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

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "each head gets n_embd // n_head dimensions"
            )

    def to_dict(self) -> dict:
        return asdict(self)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): heads become a batch dimension.
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        # softmax(q kᵀ / sqrt(head_size)) v with the upper triangle masked out;
        # PyTorch picks a fused kernel (FlashAttention on recent GPUs) for us.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward network: expand 4×, GELU, project back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class MoE(nn.Module):
    """A mixture-of-experts feed-forward: n_experts MLPs and a router.

    For each token the router scores the experts; the top experts_per_token run and
    their outputs are mixed with the router's (renormalised) probabilities. More
    parameters, about the same compute per token. Left alone, a router tends to send
    everything to a few experts; the load-balancing loss of the Switch Transformer,
    n_experts · Σ_e f_e · P_e (f_e: share of routing slots given to expert e, P_e: its
    mean router probability), is smallest (1) when routing is uniform, and is added
    to the LM loss during training, as MiniMind's train_pretrain.py does
    (loss = res.loss + res.aux_loss).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.top_k = config.experts_per_token
        self.router = nn.Linear(config.n_embd, config.n_experts, bias=False)
        self.experts = nn.ModuleList([MLP(config) for _ in range(config.n_experts)])
        self.aux_loss = torch.zeros(())  # set by every forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        tokens = x.view(-1, C)  # (N, C), N = B·T
        probs = F.softmax(self.router(tokens), dim=-1)  # (N, n_experts)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k) each
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_idx, slot = (chosen == e).nonzero(as_tuple=True)  # the tokens routed to expert e
            if token_idx.numel():
                out.index_add_(0, token_idx, expert(tokens[token_idx]) * weights[token_idx, slot, None])
        n_experts = len(self.experts)
        share = torch.bincount(chosen.flatten(), minlength=n_experts).to(probs.dtype) / chosen.numel()
        self.aux_loss = n_experts * (share * probs.mean(dim=0)).sum()
        return out.view(B, T, C)


class Block(nn.Module):
    """One Transformer layer: attention mixes positions, the MLP transforms each one."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MoE(config) if config.use_moe else MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pre-norm residual: the residual stream x is never normalised itself, which
        # keeps gradients flowing straight through deep stacks.
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
                wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the matrix that turns a token into a vector also turns the
        # final vector back into token scores. Saves V×C parameters and trains better
        # at small scale (Press & Wolf, 2017).
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two projections to the residual stream,
        # so the stream's variance grows with depth; shrinking those projections by
        # 1/sqrt(2 * n_layer) keeps it near 1 at initialisation.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score every possible next token at every position.

        idx: (B, T) token ids. targets: (B, T) the next token at each position, or
        IGNORE_INDEX (-100) where no loss should be taken (padding).
        Returns logits (B, T, V) and, when targets are given, the mean cross-entropy
        -log P(target | prefix) over the counted positions, in nats per token.
        """
        B, T = idx.size()
        if self.config.block_size < T:
            raise ValueError(f"sequence length {T} exceeds the model's block_size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=IGNORE_INDEX
            )
            if self.config.use_moe and self.training:  # evaluation reports the LM loss alone
                aux = sum(block.mlp.aux_loss for block in self.transformer.h)
                loss = loss + self.config.aux_loss_weight * aux
        return logits, loss

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. The position table is left out by default: it is a lookup,
        not compute. The token embedding stays in because, tied to lm_head, its
        weights do take part in a matmul at every position."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
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

    def configure_optimizers(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str,
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on the matrices only.

        Decay pulls weights toward zero, a regulariser that makes sense for the 2-D
        weight matrices and embeddings; on biases and LayerNorm gains (1-D) it would
        only fight the scale the model needs, so they get none.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # The fused CUDA kernel updates all parameters in one launch instead of many.
        use_fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = {"fused": True} if use_fused else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

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
            logits, _ = self(context)
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
