"""Sampling, loading and streaming: from a trained run to new sequences and online outputs.

- :func:`load` (``load.py``): a run directory or checkpoint -> :class:`LoadedRun` (model in eval mode,
  task, recipe), the loading ``ssmkit eval`` uses.
- :func:`generate` (``generate.py``): prompt read in convolution mode with state passing, then the
  recurrent step token by token (compiled when it pays), sampled by ``sampling.py``; models get it as
  ``model.generate`` through :class:`GenerationMixin`.
- :class:`Stream` (``stream.py``): an unbounded input chunk by chunk, outputs equal to one full forward.
"""
from ssmkit.generation.generate import Generation, GenerationMixin, generate
from ssmkit.generation.load import LoadedRun, load
from ssmkit.generation.sampling import filter_scores, make_generator, sample_next
from ssmkit.generation.stream import Stream

__all__ = ["Generation", "GenerationMixin", "LoadedRun", "Stream", "filter_scores", "generate", "load",
           "make_generator", "sample_next"]
