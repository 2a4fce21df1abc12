"""What the planner needs from a KV manager, and the unlimited stand-in.

:class:`KVManager` is the protocol :class:`~llmds.engine.sched.planner.Planner`
talks to; :class:`~llmds.engine.kv.block_manager.BlockManager` implements it with
real block tables, ``NullKV`` without any (the planner then enforces token
budgets only).  ``check_fits`` and ``peak_blocks`` are the capacity arithmetic
of a block pool ("could this request ever run?").
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from llmds.engine.request import RequestState
from llmds.errors import CapacityError

__all__ = ["KVManager", "NullKV", "check_fits", "peak_blocks"]


@runtime_checkable
class KVManager(Protocol):
    """What the planner needs from a KV-cache manager.

    Implemented by ``BlockManager`` (paged blocks + prefix cache) and
    ``NullKV`` (unlimited).  Invariant kept by every implementation: between
    steps a running request holds blocks for exactly its
    ``num_computed_tokens`` tokens, so a decode needs a new block
    only when ``num_computed_tokens % block_size == 0``; the planner asks for
    those blocks (``append_decode_slots``) only then.
    """

    block_size: int

    @property
    def num_free_blocks(self) -> int: ...

    def check_fits(self, seq: RequestState) -> None:
        """Raise ``CapacityError`` if ``seq`` could never run, even alone (pinned blocks
        it does not share are not available to it)."""

    def match_prefix(self, seq: RequestState) -> int:
        """Cached tokens a not-yet-allocated ``seq`` would reuse (<= num_tokens - 1); no side effects."""

    def can_allocate(self, seq: RequestState, num_new_tokens: int) -> bool: ...

    def allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        """Admit ``seq``: take its cached prefix (sets ``num_cached_tokens`` and
        ``num_computed_tokens``), then blocks for ``num_new_tokens`` more tokens.
        False (nothing changed) when blocks run short."""

    def append_slots(self, seq: RequestState, num_new_tokens: int) -> bool:
        """Blocks for ``num_new_tokens`` more tokens of a running ``seq``; False (nothing changed) when short."""

    def append_decode_slots(self, seqs: list[RequestState]) -> bool:
        """One more block for each decoding request in ``seqs`` (all at a block boundary);
        all or nothing: False (nothing changed) when short.  The decode fast path."""

    def free(self, seq: RequestState) -> None:
        """Release ``seq``'s blocks (idempotent)."""

    def rollback(self, seq: RequestState, *, release: bool = False) -> None:
        """Undo a cancelled step's KV work for a running ``seq`` whose
        ``num_computed_tokens`` is still the pre-step value: unindex the blocks
        it registered that hold uncomputed tokens, then free the blocks beyond
        its ``num_computed_tokens`` (the invariant above holds again).  With
        ``release`` (``seq`` was admitted by the cancelled step) free all its
        blocks and undo the admission's statistics."""

    def usage(self) -> float: ...


def check_fits(seq: RequestState, block_size: int, num_blocks: int, available: int | None = None,
               why: str = "") -> None:
    """CapacityError if ``seq`` needs more than ``available`` blocks (default: the pool), even alone."""
    if available is None or available == num_blocks:
        have = f"the KV pool has {num_blocks}"
    else:
        have = f"only {available} of the pool's {num_blocks} blocks are available to it{why}"
        num_blocks = available
    prompt = -(-seq.num_prompt_tokens // block_size)
    if prompt > num_blocks:
        raise CapacityError(
            f"request {seq.request_id!r}: its prompt of {seq.num_prompt_tokens} tokens needs {prompt} "
            f"blocks of {block_size} tokens but {have}; shorten the prompt or "
            "give the pool more blocks"
        )
    # the last sampled token is never fed back, so its KV is never stored
    peak = peak_blocks(seq, block_size)
    if peak > num_blocks:
        raise CapacityError(
            f"request {seq.request_id!r}: prompt ({seq.num_prompt_tokens}) + max_new_tokens "
            f"({seq.max_new_tokens}) needs {peak} blocks of {block_size} tokens but {have}; "
            "lower max_new_tokens or give the pool more blocks"
        )


def peak_blocks(seq: RequestState, block_size: int) -> int:
    """Blocks ``seq`` holds at its longest (the last sampled token's KV is never stored)."""
    return -(-(seq.num_prompt_tokens + max(seq.max_new_tokens, 1) - 1) // block_size)


class NullKV:
    """Unlimited KV: every request always fits (the planner then only enforces token budgets)."""

    __slots__ = ()
    block_size = 1 << 62  # decodes never cross a block boundary
    num_free_blocks = 1 << 62

    def usage(self) -> float:
        return 0.0

    def check_fits(self, seq: RequestState) -> None:
        return None

    def match_prefix(self, seq: RequestState) -> int:
        return 0

    def can_allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        return True

    def allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        seq.num_cached_tokens = seq.num_computed_tokens = 0
        return True

    def append_slots(self, seq: RequestState, num_new_tokens: int) -> bool:
        return True

    def append_decode_slots(self, seqs: list[RequestState]) -> bool:
        return True

    def free(self, seq: RequestState) -> None:
        return None

    def fork(self, parent: RequestState, child: RequestState) -> list:
        return []  # nothing to share or copy

    def rollback(self, seq: RequestState, *, release: bool = False) -> None:
        return None
