"""nanoGPT's shakespeare-char CPU recipe in plain PyTorch: a reference for our own run.

This re-implements, in one file and without our pipeline or trainer (no `pretrain`, no
DeepSpeed), what nanoGPT's train.py does for the README's CPU command

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False \\
        --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 \\
        --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

and scores the trained model two ways:

- whole split: every character of the validation split (the last 10% of tinyshakespeare) is a
  target exactly once; the split is cut into consecutive 64-character windows and each window's
  context starts fresh. This is the quantity our `pretrain evaluate` reports (every token scored
  once, context reset every 64 tokens), up to where the window boundaries fall and to the few
  characters at either end that our split leaves out (it starts at the next line start and
  drops a tail shorter than a 256-token sample: 111,360 targets against 111,539 here).
- nanoGPT's estimator: the mean loss of eval_iters=20 random batches of 12 windows, as train.py
  prints it (the README's 1.88 is this figure). It is noisy: 15,360 targets drawn with
  replacement.

    python benchmarks/nanogpt_reference.py --seeds 0 --threads 1          # ~3 min on one core
    python benchmarks/nanogpt_reference.py --seeds 0,1,2 --threads 1      # seed-to-seed spread
    python benchmarks/nanogpt_reference.py --seeds 0 --iters 200          # a quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reproduction import mean_std

CORPUS = Path(__file__).resolve().parents[1] / "corpora" / "tinyshakespeare" / "input.txt"


# -- The model: nanoGPT's GPT with bias=False and dropout 0 -------------------------------------


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape  # batch, time, channels (n_embd)
        hs = c // self.n_head
        q, k, v = self.c_attn(x).split(c, dim=2)  # 3 x (B, T, C)
        q = q.view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.gelu = nn.GELU()  # exact erf GELU, as nanoGPT (not the tanh approximation)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=False)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=False)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        # Plain attributes rather than nanoGPT's `transformer` ModuleDict: typed for mypy.
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=1e-5, bias=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Tied: one tensor, so named_parameters()/parameters() list it once (as wte.weight).
        self.wte.weight = self.lm_head.weight
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # GPT-2's scaled init of the projections back into the residual stream.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, idx: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, vocab) logits, T <= block_size."""
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"sequence of {t} exceeds block_size {self.config.block_size}")
        pos = torch.arange(t, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, vocab)


def configure_optimizer(
    model: nn.Module,
    *,
    weight_decay: float = 0.1,
    learning_rate: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.99),
) -> torch.optim.AdamW:
    """nanoGPT's AdamW: weight decay on every matrix (embeddings included; the tied wte/lm_head
    once), none on vectors (LayerNorm weights)."""
    params = [p for p in model.parameters() if p.requires_grad]  # deduplicated: tied once
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=1e-8)


def get_lr(
    it: int,
    *,
    learning_rate: float = 1e-3,
    min_lr: float = 1e-4,
    warmup_iters: int = 100,
    lr_decay_iters: int = 2000,
) -> float:
    """nanoGPT's schedule: linear warmup, cosine decay to ``min_lr``, then ``min_lr``."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


# -- Data and scoring ----------------------------------------------------------------------------


def encode_corpus(text: str) -> tuple[Tensor, Tensor, int]:
    """(train ids, val ids, vocab size): characters sorted into ids, split 90/10 as nanoGPT."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
    n = int(0.9 * len(data))
    return data[:n], data[n:], len(chars)


def get_batch(
    data: Tensor, block_size: int, batch_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """nanoGPT's random windows: ``batch_size`` starts drawn uniformly (with replacement)."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i : i + block_size] for i in ix.tolist()])  # (B, T)
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix.tolist()])  # (B, T)
    return x, y


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    data: Tensor,
    generator: torch.Generator,
    *,
    block_size: int,
    batch_size: int,
    eval_iters: int = 20,
) -> float:
    """nanoGPT's estimate_loss() for one split: the mean of ``eval_iters`` batch losses."""
    losses = []
    for _ in range(eval_iters):
        x, y = get_batch(data, block_size, batch_size, generator)
        logits = model(x)
        losses.append(F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1)).item())
    return statistics.mean(losses)


@torch.no_grad()
def whole_split_loss(
    model: nn.Module, data: Tensor, *, block_size: int, windows_per_batch: int = 64
) -> float:
    """Mean cross-entropy over every target of ``data`` (all ids but the first), in consecutive
    non-overlapping windows of ``block_size`` inputs whose context starts fresh; the final
    window is shorter when the targets do not fill it."""
    targets_total = len(data) - 1
    if targets_total < 1:
        raise ValueError("the split needs at least 2 tokens to score")
    full = targets_total // block_size
    x_all = data[: full * block_size].view(full, block_size)  # (windows, T)
    y_all = data[1 : full * block_size + 1].view(full, block_size)  # (windows, T)
    loss_sum = 0.0
    for start in range(0, full, windows_per_batch):
        x, y = x_all[start : start + windows_per_batch], y_all[start : start + windows_per_batch]
        logits = model(x)
        loss_sum += F.cross_entropy(
            logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
        ).item()
    if full * block_size < targets_total:  # the final partial window
        x = data[full * block_size : targets_total].unsqueeze(0)  # (1, r)
        y = data[full * block_size + 1 :].unsqueeze(0)  # (1, r)
        logits = model(x)
        loss_sum += F.cross_entropy(
            logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum"
        ).item()
    return loss_sum / targets_total


# -- Training --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceResult:
    val_loss: float  # whole validation split, every target once
    estimated_val_loss: float  # nanoGPT's estimator: mean of eval_iters random batches
    ms_per_iter: float  # median over the iterations after the first 10


def run_reference(
    seed: int,
    *,
    iters: int = 2000,
    corpus: Path = CORPUS,
    threads: int | None = None,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    block_size: int = 64,
    batch_size: int = 12,
    learning_rate: float = 1e-3,
    min_lr: float = 1e-4,
    warmup_iters: int = 100,
    lr_decay_iters: int | None = None,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    eval_iters: int = 20,
) -> ReferenceResult:
    """Train nanoGPT's recipe for ``iters`` optimizer steps in fp32 on CPU and score it.

    ``seed`` seeds the initialisation (torch.manual_seed) and the batch generator, which the
    final estimator keeps drawing from. ``lr_decay_iters`` defaults to ``iters`` (the README's
    command sets both to 2000). ``threads`` sets torch's intra-op threads for the run (restored
    afterwards); None leaves them as they are.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        train_data, val_data, vocab_size = encode_corpus(corpus.read_text(encoding="utf-8"))
        torch.manual_seed(seed)
        config = GPTConfig(vocab_size, block_size, n_layer, n_head, n_embd)
        model = GPT(config)
        optimizer = configure_optimizer(
            model, weight_decay=weight_decay, learning_rate=learning_rate
        )
        generator = torch.Generator().manual_seed(seed)
        decay_iters = iters if lr_decay_iters is None else lr_decay_iters
        model.train()
        times: list[float] = []
        for it in range(iters):
            start = time.perf_counter()
            lr = get_lr(
                it,
                learning_rate=learning_rate,
                min_lr=min_lr,
                warmup_iters=warmup_iters,
                lr_decay_iters=decay_iters,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(train_data, block_size, batch_size, generator)
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        model.eval()
        estimated = estimate_loss(
            model,
            val_data,
            generator,
            block_size=block_size,
            batch_size=batch_size,
            eval_iters=eval_iters,
        )
        whole = whole_split_loss(model, val_data, block_size=block_size)
        warm = times[10:] or times
        ms = 1000 * statistics.median(warm) if warm else math.nan
        return ReferenceResult(val_loss=whole, estimated_val_loss=estimated, ms_per_iter=ms)
    finally:
        torch.set_num_threads(previous_threads)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (init and batches)")
    parser.add_argument("--iters", type=int, default=2000, help="optimizer steps (max_iters)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the tinyshakespeare text")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: list[tuple[int, ReferenceResult]] = []
    for seed in seeds:
        result = run_reference(seed, iters=args.iters, corpus=args.corpus, threads=args.threads)
        results.append((seed, result))
        print(f"seed {seed}: {result}", flush=True)
    threads = args.threads or torch.get_num_threads()
    print(
        f"\nnanoGPT reference: {args.iters} iterations, torch {torch.__version__}, "
        f"{threads} thread(s)\n"
    )
    print(
        "| seed | val loss, whole split | nanoGPT estimator (20 batches) | ms/iteration (median) |"
    )
    print("|---|---|---|---|")
    for seed, r in results:
        print(f"| {seed} | {r.val_loss:.4f} | {r.estimated_val_loss:.4f} | {r.ms_per_iter:.0f} |")
    if len(results) > 1:
        print(
            f"over {len(results)} seeds: whole split {mean_std([r.val_loss for _, r in results])}, "
            f"nanoGPT estimator {mean_std([r.estimated_val_loss for _, r in results])}"
        )


if __name__ == "__main__":
    main()
