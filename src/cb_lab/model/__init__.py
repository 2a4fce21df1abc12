"""The TinyLLM model of cb_lab."""
