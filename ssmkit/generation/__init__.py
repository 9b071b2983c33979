"""Sampling and streaming: functions over a model (any backbone with a recurrent ``step``), never methods of it.

- :func:`generate` (``generate.py``): ``ssmkit.generate(model, prompt, max_new_tokens, ...)``: the prompt read in
  convolution mode with state passing, then the recurrent step token by token (compiled when it pays), sampled by
  ``sampling.py``.
- :class:`Stream` (``stream.py``): ``ssmkit.Stream(model)``: an unbounded input chunk by chunk, outputs equal to
  one full forward.
- ``recurrent.py``: what both need from a model (a prediction per position, a recurrence in every mixer).

Loading a trained run is ``ssmkit.load`` (``ssmkit/runs/load.py``), below both training and generation.
"""
from ssmkit.generation.generate import Generation, generate
from ssmkit.generation.recurrent import check_recurrent
from ssmkit.generation.sampling import filter_scores, make_generator, sample_next
from ssmkit.generation.stream import Stream

__all__ = ["Generation", "Stream", "check_recurrent", "filter_scores", "generate", "make_generator", "sample_next"]
