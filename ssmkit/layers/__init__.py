from ssmkit.layers.sequence import ACTIVATIONS, OUTPUTS, SequenceLayer

__all__ = ["ACTIVATIONS", "OUTPUTS", "SequenceLayer"]
