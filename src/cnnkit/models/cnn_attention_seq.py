"""A CNN that reads a row of digits with the chapter's soft attention (`cnnkit.layers.Attention`).

The encoder turns the image into a sequence of column features, as CRNN does (Shi, Bai & Yao 2015,
"An End-to-End Trainable Neural Network for Image-based Sequence Recognition",
https://arxiv.org/abs/1507.05717): ConvNormAct stages, the height pooled away, one feature
vector per group of pixel columns, then a bidirectional GRU so that every column knows its
neighbours. The decoder is Bahdanau, Cho & Bengio 2015 (https://arxiv.org/abs/1409.0473) over
those columns, the image-reading use of Xu et al. 2015, "Show, Attend and Tell"
(https://arxiv.org/abs/1502.03044): at each output step it weighs the columns, reads their
weighted sum and emits one token (a digit, or "end" once the row is read).

    x (B, C, 28, 140) → CNN (B, C', 7, 35) → max over height (35, B, C') → BiGRU (L=35, B, E)
    for t < max_len:  α_t = Attention(s, H)  (B, L);  c_t = Σ_l α_tl h_l  (B, E)
                      y_t = fc([s; c_t])  (B, K);     s ← GRUCell([c_t; emb(p(y_t))], s)
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.layers.attention import Attention, attend
from cnnkit.models._registry import register_model
from cnnkit.utils import CnnkitError


class ColumnEncoder(nn.Module):
    """Image (B, C, H, W) → encoder_outputs (L, B, E): one vector per `column_width` pixel columns
    (4 with the default three stages: L = 35 for a 140-pixel canvas).

    The first conv has stride 2 (the canvas is mostly background: 4× cheaper than conv + pool at
    full resolution), each later stage but the last ends in a 2×2 max-pool; the height left over
    is max-pooled to 1 (a stroke anywhere in the column counts), the width is kept.
    """

    def __init__(self, in_chans: int, widths: tuple[int, ...], *, enc_dim: int, rnn: bool,
                 norm="batchnorm", act="relu"):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for i, width in enumerate(widths):
            stride = 2 if i == 0 and len(widths) > 1 else 1
            layers.append(ConvNormAct(channels, width, 3, stride=stride, norm=norm, act=act))
            if 0 < i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.column_width = 2 ** (len(widths) - 1)  # input pixels per output column
        # The GRU gives each column its context: which digit it belongs to, and whether it is
        # the left or the right part of it, which a 3×3 CNN stack cannot see from one column.
        self.rnn = nn.GRU(channels, enc_dim // 2, bidirectional=True) if rnn else None
        self.out_dim = enc_dim if rnn else channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, C', H/4, W/4) with the default three stages
        columns = f.amax(dim=2).permute(2, 0, 1)  # (L, B, C'): max over the height
        if self.rnn is not None:
            columns, _ = self.rnn(columns)  # (L, B, E), both directions concatenated
        return columns


class AttentionDecoder(nn.Module):
    """encoder_outputs (L, B, E) → logits (B, max_len, K) and attention weights (B, max_len, L).

    No teacher forcing: the decoder never sees labels. What it is told between steps is the
    embedding of its own prediction, as an expectation under the (detached) softmax, so that
    every embedding row is trained and `forward(x)` is the same function in training and test.
    """

    def __init__(self, enc_dim: int, dec_dim: int, num_classes: int, max_len: int,
                 embed_dim: int):
        super().__init__()
        self.max_len = max_len
        # s_0 = tanh(W mean_l h_l): Bahdanau et al. (appendix A.2.2) start from a summary of the
        # source, tanh(W h←_1); the mean over columns plays that part, with or without the GRU.
        self.init_hidden = nn.Linear(enc_dim, dec_dim)
        self.attention = Attention(enc_dim, dec_dim)  # the chapter's layer, unchanged
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.cell = nn.GRUCell(enc_dim + embed_dim, dec_dim)
        self.fc = nn.Linear(dec_dim + enc_dim, num_classes)

    def forward(self, encoder_outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.tanh(self.init_hidden(encoder_outputs.mean(0)))  # (B, D)
        logits, weights = [], []
        for t in range(self.max_len):
            alpha = self.attention(hidden, encoder_outputs)  # (B, L), rows sum to 1
            context = attend(alpha, encoder_outputs)  # (B, E)
            step_logits = self.fc(torch.cat([hidden, context], dim=1))  # (B, K)
            logits.append(step_logits)
            weights.append(alpha)
            if t + 1 < self.max_len:  # the last state would never be read
                said = step_logits.detach().softmax(dim=1) @ self.embed.weight  # (B, embed)
                hidden = self.cell(torch.cat([context, said], dim=1), hidden)  # (B, D)
        return torch.stack(logits, dim=1), torch.stack(weights, dim=1)  # (B, T, K), (B, T, L)


class CnnAttentionSeq(nn.Module):
    """Reads up to `max_len` tokens from an image: logits (B, max_len, num_classes).

    After each forward, `last_attention` holds the weights (B, max_len, L) over the L encoder
    columns (detached); column l covers input pixels l·W/L … (l+1)·W/L.
    """

    sequence_output = True  # one distribution per output position (tests/models/test_zoo.py)

    def __init__(self, num_classes: int = 11, in_chans: int = 1, *, max_len: int = 5,
                 widths: tuple[int, ...] = (32, 64, 128), enc_dim: int = 128, dec_dim: int = 128,
                 embed_dim: int = 32, rnn: bool = True, norm="batchnorm", act="relu"):
        super().__init__()
        if max_len < 1 or not widths or (rnn and enc_dim % 2):
            raise CnnkitError(f"cnn_attention_seq needs max_len ≥ 1, at least one conv width and "
                              f"an even enc_dim (two GRU directions), got max_len={max_len}, "
                              f"widths={widths}, enc_dim={enc_dim}")
        self.num_classes, self.in_chans, self.max_len = num_classes, in_chans, max_len
        self.encoder = ColumnEncoder(in_chans, tuple(widths), enc_dim=enc_dim, rnn=rnn,
                                     norm=norm, act=act)
        self.decoder = AttentionDecoder(self.encoder.out_dim, dec_dim, num_classes, max_len,
                                        embed_dim)
        self.last_attention: torch.Tensor | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """encoder_outputs (L, B, E), the layout the chapter's Attention expects."""
        return self.encoder(x)

    def forward_head(self, encoder_outputs: torch.Tensor) -> torch.Tensor:
        logits, weights = self.decoder(encoder_outputs)
        self.last_attention = weights.detach()
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_cnn_attention_seq(num_classes: int, in_chans: int, max_len: int,
                             **kwargs) -> CnnAttentionSeq:
    return CnnAttentionSeq(num_classes, in_chans, max_len=max_len, **kwargs)


@register_model(input_size=(1, 28, 140), test_input_size=(1, 28, 140))
def cnn_attention_seq(num_classes=11, in_chans=1, max_len=5, **kw):
    return _build_cnn_attention_seq(num_classes, in_chans, max_len, **kw)
