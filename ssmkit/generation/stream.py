"""Online inference: feed an unbounded input chunk by chunk, get each chunk's outputs as it arrives.

    stream = ssmkit.Stream(model)
    for chunk in source:                     # (B, l) token ids or (B, l, d_input) features, any l >= 1
        y = stream(chunk)                    # (B, l, d_output): the same numbers as model(whole input)

Each chunk runs in convolution mode from the state the previous chunks left (``forward(state=...,
return_state=True)``): an FFT convolution over the chunk plus the state's free response, and the state
after the chunk. A chunk of one position takes the recurrent ``step`` instead (no FFT). Either way the
outputs equal one forward over the concatenation of all chunks, and memory stays bounded by the state
(for attention: by the KV cache, which grows unless the attention is local). Models whose mixers have
no recurrence (SGConv, bidirectional mixers, ``max_kernel_length``) cannot stream and are refused.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ssmkit.errors import UserError
from ssmkit.generation.recurrent import check_recurrent


class Stream:
    """Runs ``model`` over an input that arrives in chunks. The model is put in eval mode.

    Attributes: ``position`` (inputs read so far), ``state`` (every layer's state after them, None
    before the first chunk). ``reset()`` starts a new input.
    """

    def __init__(self, model: nn.Module):
        check_recurrent(model, "streaming")
        self.model = model.eval()
        self.state = None
        self.position = 0
        self.batch_size: int | None = None

    def reset(self) -> None:
        """Forget the input read so far (the next chunk starts a new sequence, possibly another batch size)."""
        self.state, self.position, self.batch_size = None, 0, None

    @torch.no_grad()
    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        """chunk (B, l) ids or (B, l, d_input) features -> (B, l, d_output), the outputs at these positions."""
        if chunk.dim() < 2:
            raise UserError(f"a stream chunk is (batch, length) or (batch, length, features), got shape {tuple(chunk.shape)}")
        B, length = chunk.shape[:2]
        if self.batch_size is not None and B != self.batch_size:
            raise UserError(f"this stream carries {self.batch_size} sequences, got a chunk of {B}; call reset() to start anew")
        if self.state is None:
            self.batch_size = B
            self.state = self.model.default_state(B, device=chunk.device)
        if length == 0:  # nothing arrived: no outputs, the state is unchanged
            decoder = getattr(self.model, "decoder", None)
            if not isinstance(decoder, nn.Linear):
                raise UserError(f"an empty chunk: {type(self.model).__name__} has no decoder to size its empty output by")
            return torch.zeros(B, 0, decoder.out_features, dtype=decoder.weight.dtype, device=chunk.device)
        if length == 1:
            y, self.state = self.model.step(chunk[:, 0], self.state)
            y = y.unsqueeze(1)
        else:
            y, self.state = self.model(chunk, state=self.state, return_state=True)
        self.position += length
        return y
