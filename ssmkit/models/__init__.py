from ssmkit.models.sequence import NORMS, POOLS, ResidualBlock, SequenceModel

__all__ = ["NORMS", "POOLS", "ResidualBlock", "SequenceModel"]
