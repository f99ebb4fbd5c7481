"""streamdistill: streaming-compatible causal students and teacher-aligned embedding distillation."""

__version__ = "0.1.0"
