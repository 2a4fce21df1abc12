"""Request, scheduler, KV caches and ragged batches of cb_lab."""
