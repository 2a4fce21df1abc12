"""The OpenAI-compatible HTTP server (the ``server`` extra: FastAPI, uvicorn, prometheus-client).

``llmds serve`` builds a :class:`~llmds.server.state.ServerState` (engine, engine thread,
admission gate, retrieval index, metrics), hands it to :func:`~llmds.server.app.create_app` and
runs uvicorn (:mod:`llmds.server.run`).  Nothing here is imported by ``import llmds``.
"""
