"""The server's routes, one module per group, each a ``router(state)`` returning a FastAPI ``APIRouter``:

* :mod:`~llmds.server.routes.generation`: ``/v1/chat/completions``, ``/v1/completions``;
* :mod:`~llmds.server.routes.tokens`: ``/v1/models``, ``/tokenize``, ``/detokenize``;
* :mod:`~llmds.server.routes.retrieval`: ``/v1/embeddings``, ``/v1/retrieve``, ``/v1/documents``;
* :mod:`~llmds.server.routes.ops`: ``/health``, ``/metrics``.

Handlers never run the LLM: they validate (:mod:`llmds.server.protocol`), tokenize, pass the
admission gate and await the engine thread's outputs (:mod:`llmds.server.state`); errors are
:class:`~llmds.server.errors.APIError`.  ``request.state.request_id`` is the request's id (the
client's ``X-Request-Id`` or a new one, echoed in the response; :class:`~llmds.server.http.Guard`).
"""
