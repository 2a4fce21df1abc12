"""Engine configuration objects: slotted dataclasses, validated once at construction.

``SamplingParams`` says how a request's tokens are sampled.  The step budget of
the planner (``PlannerConfig``) stays with the planner
(:mod:`llmds.engine.planner`), the only code that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmds._checks import check_bool, check_float, check_int, check_token_ids
from llmds.errors import ValidationError

__all__ = ["SamplingParams"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample a request's tokens (validated once, immutable).

    Parameters
    ----------
    temperature : float
        Finite, >= 0; 0 means greedy.
    top_p : float
        Nucleus mass in (0, 1]; 1 disables.
    top_k : int
        -1 disables, else >= 1.
    max_tokens : int
        Tokens to generate, >= 0 (0 finishes the request at once).
    stop_token_ids : sequence of int
        Extra token ids that stop generation (the engine adds EOS unless
        ``ignore_eos``); stored as a tuple.
    seed : int or None
        Per-request sampling seed.
    ignore_eos : bool
        Keep generating past EOS.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        top_k = check_int("top_k", self.top_k, -1)
        if top_k == 0:
            raise ValidationError("top_k must be -1 (disabled) or >= 1, got 0")
        values = {
            "temperature": check_float("temperature", self.temperature, 0.0),
            "top_p": check_float("top_p", self.top_p, 0.0, 1.0, low_open=True),
            "top_k": top_k,
            "max_tokens": check_int("max_tokens", self.max_tokens, 0),
            "stop_token_ids": tuple(check_token_ids("stop_token_ids", self.stop_token_ids)),
            "seed": None if self.seed is None else check_int("seed", self.seed),
            "ignore_eos": check_bool("ignore_eos", self.ignore_eos),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
