"""msmall: launch Mistral Small 3.1 on your own GPUs and prove the endpoint serves."""

__version__ = "0.1.0"
