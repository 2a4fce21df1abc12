"""TinyLLM of cb_lab (defined in :mod:`llmds.engine.models.tiny`)."""

from llmds.engine.models.tiny import RaggedOutput, TinyLLM

__all__ = ["TinyLLM", "RaggedOutput"]
