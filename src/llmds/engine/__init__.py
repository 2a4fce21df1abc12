"""The serving engine's core: only what the engine itself runs.

The KV path is planner → block manager → block ids → storage:

* ``request`` / ``config``: ``RequestState`` (plain counters) and ``SamplingParams``;
* ``planner`` (+ ``request_queue``, ``decode_batch``, ``step_plan``): the one step policy;
* ``block_manager`` (+ ``block_runs``, ``kv_manager``): the one owner of block tables;
* ``kv_storage``: the per-layer K/V block tensors addressed by block ids;
* ``kv_arena`` (+ ``kv_policies``, ``_kv_report``): the CortexStream request-keyed API over them.

Importing this package imports nothing; torch loads with ``kv_storage`` / ``kv_arena``.
"""
