"""Model families, one readable file each. Importing registers them."""
from .gpt import GPT, BlockPlan, GPTConfig
from .hf import HFConfig, HFModel
from .resnet import ResNet, ResNetConfig
from .stitched import StitchedGPT, StitchedGPTConfig

__all__ = ["HFConfig", "HFModel", "GPT", "GPTConfig", "BlockPlan", "ResNet", "ResNetConfig", "StitchedGPT", "StitchedGPTConfig"]
