"""The model class, under the name callers of earlier versions imported it by."""

from models.transformer import CausalLM

__all__ = ["CausalLM"]
