"""Model families, one readable file each. Importing registers them."""
from .gpt import GPT, BlockPlan, GPTConfig

__all__ = ["GPT", "GPTConfig", "BlockPlan"]
