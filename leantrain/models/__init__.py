"""Model families, one readable file each. Importing registers them. ``protocol`` is what methods
may ask of any model (leantrain's own, a Hugging Face adapter's, a user's)."""
from . import protocol
from .gpt import GPT, GPTConfig
from .hf import HFConfig, HFModel
from .protocol import BlockPlan
from .resnet import ResNet, ResNetConfig
from .stitched import StitchedGPT, StitchedGPTConfig

__all__ = ["GPT", "GPTConfig", "BlockPlan", "HFConfig", "HFModel", "ResNet", "ResNetConfig", "StitchedGPT",
           "StitchedGPTConfig", "protocol"]
