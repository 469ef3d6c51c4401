"""The chapter's soft (additive) attention: Bahdanau, Cho & Bengio 2015,
"Neural Machine Translation by Jointly Learning to Align and Translate" (https://arxiv.org/abs/1409.0473).

    e_i = vᵀ tanh(W [s; h_i]),   α = softmax(e),   context = Σ_i α_i h_i
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Attention weights of a decoder state over encoder outputs (the chapter's layout and shapes).

    hidden: (B, dec_hid_dim); encoder_outputs: (src_len, B, enc_hid_dim) → weights (B, src_len).
    """

    def __init__(self, enc_hid_dim: int, dec_hid_dim: int):
        super().__init__()
        self.attn = nn.Linear(enc_hid_dim + dec_hid_dim, dec_hid_dim)
        self.v = nn.Linear(dec_hid_dim, 1, bias=False)

    def forward(self, hidden: torch.Tensor, encoder_outputs: torch.Tensor) -> torch.Tensor:
        src_len = encoder_outputs.shape[0]
        hidden = hidden.unsqueeze(1).expand(-1, src_len, -1)  # (B, src_len, dec)
        encoder_outputs = encoder_outputs.permute(1, 0, 2)  # (B, src_len, enc)
        energy = torch.tanh(self.attn(torch.cat((hidden, encoder_outputs), dim=2)))  # (B, L, dec)
        return F.softmax(self.v(energy).squeeze(2), dim=1)  # (B, src_len)


def attend(weights: torch.Tensor, encoder_outputs: torch.Tensor) -> torch.Tensor:
    """Context vector Σ_i α_i h_i: weights (B, L), encoder_outputs (L, B, E) → (B, E)."""
    return torch.einsum("bl,lbe->be", weights, encoder_outputs)
