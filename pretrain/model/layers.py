"""Norms and the MLP: the position-independent parts of a block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight. Written out (not ``nn.RMSNorm``) to support torch < 2.4."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))  # set in init_weights()

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32: the mean of squares of bf16 activations loses precision.
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.float() * scale).type_as(x) * self.weight


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class MLP(nn.Module):
    """d_model -> ffn -> d_model, with GELU or SwiGLU. SwiGLU's gate and up projections share
    one matrix (one matmul instead of two); the parameter count is the same."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.activation == "swiglu"
        width = 2 * config.ffn_dim if self.swiglu else config.ffn_dim
        self.fc = nn.Linear(config.d_model, width, bias=config.bias)
        self.proj = nn.Linear(config.ffn_dim, config.d_model, bias=config.bias)
        self.proj.residual = True  # type: ignore[assignment]  # scaled init, see init_weights()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)  # (B, T, ffn) or (B, T, 2 * ffn)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)  # (B, T, ffn) each
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's GELU
        return self.dropout(self.proj(h))  # (B, T, d)
