"""A small vision-language model shaped like MindSpeed-MM's VLMs.

image_encoder.vision_encoder (patch embedding + transformer) -> image_encoder.vision_projector
(MLP) -> text_decoder (causal transformer over [image tokens, BOS, caption]). Sizes come
from the --mm-model JSON, under the same keys MindSpeed-MM uses.
"""

from __future__ import annotations

import torch
from torch import nn

BOS = 1  # token 0 is padding, 1 starts every caption


def _layers(hidden: int, heads: int, ffn: int, num_layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)


class VisionEncoder(nn.Module):
    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        hidden_size: int,
        num_layers: int,
        num_attention_heads: int,
        dropout: float = 0.0,
        **_ignored,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.num_patches = (image_size // patch_size) ** 2
        self.position = nn.Parameter(torch.zeros(1, self.num_patches, hidden_size))
        self.blocks = _layers(hidden_size, num_attention_heads, 4 * hidden_size, num_layers, dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2) + self.position
        return self.blocks(x)


class VisionProjector(nn.Module):
    def __init__(self, input_size: int, output_size: int, hidden_size: int | None = None, **_ignored):
        super().__init__()
        hidden = hidden_size or output_size
        self.mlp = nn.Sequential(nn.Linear(input_size, hidden), nn.GELU(), nn.Linear(hidden, output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class TextDecoder(nn.Module):
    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        ffn_hidden_size: int,
        num_attention_heads: int,
        vocab_size: int,
        max_position_embeddings: int,
        hidden_dropout: float = 0.0,
        **_ignored,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.position = nn.Embedding(max_position_embeddings, hidden_size)
        self.blocks = _layers(hidden_size, num_attention_heads, ffn_hidden_size, num_layers, hidden_dropout)
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False)
        self.max_positions = max_position_embeddings

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([prefix, self.embed(tokens)], dim=1)
        length = x.shape[1]
        if length > self.max_positions:
            raise ValueError(f"sequence of {length} exceeds max_position_embeddings {self.max_positions}")
        x = x + self.position(torch.arange(length, device=x.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=x.device)
        return self.head(self.norm(self.blocks(x, mask=mask, is_causal=True)))


class TinyVLM(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        vision = config["image_encoder"]["vision_encoder"]
        projector = config["image_encoder"].get("vision_projector", {})
        decoder = config["text_decoder"]
        self.vision_encoder = VisionEncoder(**vision)
        self.vision_projector = VisionProjector(
            vision["hidden_size"], decoder["hidden_size"], projector.get("hidden_size")
        )
        self.text_decoder = TextDecoder(**decoder)
        self.vocab_size = decoder["vocab_size"]

    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each caption token given the image and the tokens before it."""
        prefix = self.vision_projector(self.vision_encoder(images))
        bos = torch.full_like(captions[:, :1], BOS)
        logits = self.text_decoder(prefix, torch.cat([bos, captions[:, :-1]], dim=1))
        logits = logits[:, prefix.shape[1] :]
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size), captions.reshape(-1))
