"""forgetbench: how much full fine-tuning makes an LLM forget, and which settings prevent it."""

__version__ = "0.1.0"
