"""The best file of a repo for a fleet: plan every variant (quantization) and rank them.

Pure: the profiles are read by the caller (``cli/variants.py`` reads every variant's header over
HTTP). The order: variants that fit first; among them the longest context; then the most precise
weights (more bytes per weight, which is what a smaller quantization gives up); then the faster.
So the first row is the best quality that still fits with the most context, and the table shows
the trade (weights, context, predicted decode speed) for the user to pick a faster one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llamasplit.devices.device import Fleet
from llamasplit.errors import NoFeasiblePlan, UsageError
from llamasplit.model.profile import ModelProfile
from llamasplit.planner.plan import Plan, PlanOptions, plan


@dataclass(frozen=True)
class Variant:
    """One file (or split model) of a repo, planned for the fleet."""

    label: str
    """How it is asked for: ``-hf`` tag or file name."""
    profile: ModelProfile
    plan: Plan | None
    """``None`` when it does not fit."""
    why_not: str | None = None

    @property
    def fits(self) -> bool:
        return self.plan is not None

    @property
    def n_ctx(self) -> int | None:
        return None if self.plan is None else self.plan.n_ctx

    @property
    def decode_tok_s(self) -> float | None:
        return None if self.plan is None else self.plan.decode_tok_s


def rank(models: Sequence[tuple[str, ModelProfile]], fleet: Fleet, options: PlanOptions) -> list[Variant]:
    """Plan each ``(label, profile)`` on ``fleet`` and order them best first (see the module docstring)."""
    out = []
    for label, profile in models:
        try:
            out.append(Variant(label, profile, plan(profile, fleet, options)))
        except (NoFeasiblePlan, UsageError) as err:
            out.append(Variant(label, profile, None, err.message))

    def key(v: Variant):
        if v.plan is None:
            return (1, 0, v.profile.tensor_bytes, 0.0)  # smallest misses first: closest to fitting
        return (0, -v.plan.n_ctx, -v.profile.tensor_bytes, -(v.plan.decode_tok_s or 0.0))

    return sorted(out, key=key)
