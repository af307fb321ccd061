"""A deterministic image-caption dataset and Megatron's sampler arithmetic.

Every sample is a pure function of its index (seeded generator), and the order of samples
is a pure function of (seed, epoch); so the data position is one number, consumed samples,
and a resumed run reads exactly the samples an uninterrupted run would.

The relation to learn: each image is its class's prototype plus noise, and the caption is
that class's token sequence. The first caption token needs the image; later ones follow.
`read_latency_ms` makes each sample cost that long to "read", like a slow shared filesystem:
tests and benchmarks use it to give a job a known, machine-independent upper speed.
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset, Sampler


class SyntheticCaptionDataset(Dataset):
    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        image_size: int,
        caption_length: int,
        vocab_size: int,
        in_channels: int = 3,
        noise: float = 0.5,
        seed: int = 1234,
        read_latency_ms: float = 0.0,
        **_ignored,
    ):
        if vocab_size < 3:
            raise ValueError("vocab_size must be at least 3 (padding, BOS and one word)")
        if read_latency_ms < 0:
            raise ValueError("read_latency_ms must be 0 or more")
        self.num_samples, self.noise, self.seed = num_samples, noise, seed
        self.read_latency = read_latency_ms / 1000.0
        g = torch.Generator().manual_seed(seed)
        self.prototypes = torch.randn(num_classes, in_channels, image_size, image_size, generator=g)
        self.captions = torch.randint(2, vocab_size, (num_classes, caption_length), generator=g)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if self.read_latency:
            time.sleep(self.read_latency)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(len(self.prototypes), (1,), generator=g))
        image = self.prototypes[label] + self.noise * torch.randn(self.prototypes[label].shape, generator=g)
        return image, self.captions[label]


class PretrainingBatchSampler(Sampler):
    """Megatron's data position: global batches of MBS x DP, this rank taking its slice.

    Starts at `consumed_samples` (counted over all ranks), reshuffles each epoch with a
    generator seeded by (seed, epoch) when `shuffle` is set, and drops the incomplete tail.
    """

    def __init__(
        self,
        num_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        shuffle: bool,
        seed: int,
    ):
        self.n, self.consumed, self.mbs = num_samples, consumed_samples, micro_batch_size
        self.rank, self.dp, self.shuffle, self.seed = dp_rank, dp_size, shuffle, seed
        self.chunk = micro_batch_size * dp_size
        self.per_epoch = (num_samples // self.chunk) * self.chunk
        if self.per_epoch == 0:
            raise ValueError(f"dataset of {num_samples} samples is smaller than one micro-batch x DP ({self.chunk})")

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        position = self.consumed
        epoch, order = None, None
        while True:
            e, offset = divmod(position, self.per_epoch)
            if e != epoch:
                epoch, order = e, self._order(e)
            start = offset + self.rank * self.mbs
            yield order[start : start + self.mbs]
            position += self.chunk

    def __len__(self) -> int:  # endless; the trainer stops by iteration count
        return 2**62
