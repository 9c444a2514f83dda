"""Single device, layer split, tensor split or one replica per GPU: each option's predicted speed
(``llamasplit.speed``), and which to use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llamasplit.devices.device import Device, Fleet
from llamasplit.errors import UsageError
from llamasplit.model.locate import llama_model_args
from llamasplit.speed.comm import ALLREDUCES_PER_LAYER, allreduce_algorithm
from llamasplit.speed.links import group_link
from llamasplit.speed.model import SpeedEstimate, layer_split_speed, tensor_split_speed

@dataclass(frozen=True)
class Option:
    """One way to run the model on (part of) the fleet, with its predicted speed, or why not."""

    kind: str
    """``single``, ``layer``, ``tensor`` or ``data-parallel``."""
    devices: tuple[str, ...]
    speed: SpeedEstimate | None
    argv: tuple[str, ...] = ()
    why_not: str | None = None
    detail: str = ""
    replicas: int = 1

    @property
    def fits(self) -> bool:
        """It fits (``why_not`` is ``None``), whether or not its speed can be predicted."""
        return self.why_not is None

    @property
    def known(self) -> bool:
        """It fits and its speed is predicted."""
        return self.fits and self.speed is not None and self.speed.known

    @property
    def decode_tok_s(self) -> float:
        """Single-stream decode speed (data parallel: one replica's); 0 when unknown."""
        return self.speed.decode_tok_s or 0.0 if self.speed else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.speed.prefill_tok_s or 0.0 if self.speed else 0.0

    @property
    def total_decode_tok_s(self) -> float:
        return self.decode_tok_s * self.replicas

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind, "devices": list(self.devices), "fits": self.fits, "why_not": self.why_not,
            "replicas": self.replicas, "speed": self.speed.to_dict() if self.speed else None,
            "decode_tok_s": self.speed.decode_tok_s if self.speed else None,
            "prefill_tok_s": self.speed.prefill_tok_s if self.speed else None,
            "speed_basis": self.speed.speed_basis if self.speed else None,
            "total_decode_tok_s": self.total_decode_tok_s if self.known else None, "argv": list(self.argv),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Recommendation:
    """Every option with its numbers, the pick, and the one-line reason."""

    model: str
    options: tuple[Option, ...]
    best: Option | None
    verdict: str
    prompt_tokens: int

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model, "prompt_tokens": self.prompt_tokens, "verdict": self.verdict,
            "best": self.best.to_dict() if self.best else None, "options": [o.to_dict() for o in self.options],
        }


def _budgets_ok(totals: Sequence[int], devices: Sequence[Device], margin_bytes: int) -> str | None:
    for t, d in zip(totals, devices):
        free = d.free_bytes if d.free_bytes is not None else d.total_bytes
        if free is not None and t > free - margin_bytes:
            return f"{d.name} would need {t / 2**30:.1f} GiB of {max(free - margin_bytes, 0) / 2**30:.1f} GiB"
    return None


def _tensor_groups(fleet: Fleet) -> list[tuple[Device, ...]]:
    """Device groups worth trying tensor split on: every group of identical cards, and all devices."""
    groups: list[tuple[Device, ...]] = []
    by_kind: dict[str, list[Device]] = {}
    for d in fleet.devices:
        by_kind.setdefault(d.description, []).append(d)
    for members in by_kind.values():
        if len(members) >= 2:
            groups.append(tuple(members))
    if len(fleet.devices) >= 2 and tuple(fleet.devices) not in groups:
        groups.append(tuple(fleet.devices))
    return groups



def _rank(o: Option) -> tuple[bool, float]:
    """Known speeds first, then the faster."""
    return (o.known, o.decode_tok_s)


def recommend(
    model, fleet: Fleet, settings=None, *, prompt_tokens: int = 2048, margin_bytes: int = 1 << 30, nccl: bool = True,
) -> Recommendation:
    """Compare one device, layer split, tensor split and one replica per GPU for ``model`` on
    ``fleet``: predicted prefill and decode speed of each by the one speed model (pure; the fleet
    is a snapshot). An option whose speed cannot be predicted still fits; it ranks after the
    ones whose speed is known.

    Layer and tensor split are compared on the same devices (the group tensor split does best on);
    tensor split is only proposed for archs the compatibility record says run."""
    import dataclasses as dc

    from llamasplit.errors import NoFeasiblePlan
    from llamasplit.memory.estimate import estimate
    from llamasplit.planner.plan import PlanOptions, plan
    from llamasplit.memory.settings import LlamaSettings
    from llamasplit.memory.tensor_split import arch_status, estimate_tensor

    settings = settings or LlamaSettings(n_ctx=4096)
    if settings.n_ctx is None:
        settings = settings.replace(n_ctx=4096)
    ub = settings.n_ubatch

    def layer_speed(devs: Sequence[Device], est) -> SpeedEstimate:
        return layer_split_speed(model, fleet, devs, est, prompt_tokens=prompt_tokens, n_ubatch=ub)

    def single_option(d: Device) -> Option:
        sub = dc.replace(fleet, devices=(d,), links=())
        try:
            p = plan(model, sub, PlanOptions(settings=settings, fixed=frozenset({"n_ctx"}), margin_bytes=margin_bytes))
        except (NoFeasiblePlan, UsageError) as err:
            return Option("single", (d.name,), None, why_not=err.message)
        if p.settings.n_gpu_layers is not None:
            return Option("single", (d.name,), None, why_not=f"only {p.settings.n_gpu_layers} of {model.hparams.n_layer + 1} layers fit")
        devs = list(p.fleet.devices)
        try:
            speed = layer_speed(devs, estimate(model, devs, p.settings))
        except UsageError as err:
            return Option("single", (d.name,), None, why_not=err.message)
        return Option("single", (d.name,), speed, tuple(p.argv()))

    def layer_option(group: Sequence[Device]) -> Option:
        names = tuple(d.name for d in group)
        # llama.cpp's default: layers in proportion to free memory (no -ts) when the fleet knows it
        known = all(d.free_bytes is not None for d in group)
        s = settings.replace(split_mode="layer", tensor_split=None if known else (1.0,) * len(group), n_gpu_layers=None)
        try:
            est = estimate(model, list(group), s)
        except UsageError as err:
            return Option("layer", names, None, why_not=err.message)
        short = _budgets_ok([e.total_bytes for e in est.devices], group, margin_bytes)
        if short:
            return Option("layer", names, None, why_not=short)
        return Option("layer", names, layer_speed(group, est), ("llama-server", *llama_model_args(model.path), *s.to_args()))

    def tensor_option(group: Sequence[Device], ts) -> Option:
        names = tuple(d.name for d in group)
        s = settings.replace(split_mode="tensor", tensor_split=ts, n_gpu_layers=None,
                             flash_attn="on" if settings.flash_attn == "off" else settings.flash_attn)
        try:
            test = estimate_tensor(model, group, s)
        except UsageError as err:
            return Option("tensor", names, None, why_not=err.message)
        short = _budgets_ok([e.total_bytes for e in test.devices], group, margin_bytes)
        if short:
            return Option("tensor", names, None, why_not=short)
        algo, algo_why = allreduce_algorithm(group, nccl=nccl)
        link = group_link(fleet, group)
        speed = tensor_split_speed(model, fleet, group, test, algo, link, prompt_tokens=prompt_tokens, n_ubatch=ub)
        n_allreduce = ALLREDUCES_PER_LAYER * sum(1 for il in range(model.hparams.n_layer) if test.layer_on_meta[il])
        detail = f"{algo.value} over {link.kind if link else '-'}, {n_allreduce} all-reduces per token: {algo_why}"
        return Option("tensor", names, speed, ("llama-server", *llama_model_args(model.path), *s.to_args()), detail=detail)

    options: list[Option] = []
    singles = [single_option(d) for d in fleet.devices]
    fitting = [o for o in singles if o.fits]
    options.append(max(fitting, key=_rank) if fitting
                   else Option("single", (), None, why_not="the model does not fit on any one device"))
    groups = _tensor_groups(fleet)
    status, why = arch_status(model.arch)
    tensors: list[Option] = []
    for group in groups:
        if status != "works":
            break
        bw = [d.bandwidth_gb_s or 1.0 for d in group]
        for ts in [None] if len(set(bw)) == 1 else [None, tuple(round(b / min(bw), 2) for b in bw)]:
            tensors.append(tensor_option(group, ts))
    fit_t = [o for o in tensors if o.fits]
    best_t = max(fit_t, key=_rank) if fit_t else None
    if groups:
        # layer split on the same devices as the best tensor split (or the largest group)
        group = next(g for g in groups if best_t is None or tuple(d.name for d in g) == best_t.devices)
        if best_t is None:
            group = max(groups, key=len)
        options.append(layer_option(group))
        if best_t is not None:
            options.append(best_t)
        elif status != "works":
            options.append(Option("tensor", (), None, why_not=f"not proposed for {model.arch} ({status} under -sm tensor "
                                  "at the pinned llama.cpp, see tensor_compat.json)", detail=why))
        else:
            options.append(tensors[-1] if tensors else Option("tensor", (), None, why_not="no group of two devices"))
    if len(fitting) >= 2:
        known = all(o.known for o in fitting)
        per = SpeedEstimate(
            "data-parallel", tuple(o.devices[0] for o in fitting),
            sum(o.decode_tok_s for o in fitting) / len(fitting) if known else None,
            sum(o.prefill_tok_s for o in fitting) / len(fitting) if known else None, 0.0, 0.0, prompt_tokens,
            tuple(o.speed.speed_basis if o.speed else None for o in fitting),
            tuple(n for o in fitting if o.speed for n in o.speed.unknown),
        )
        options.append(Option("data-parallel", per.devices, per, fitting[0].argv, replicas=len(fitting),
                              detail="one llama-server per device: throughput adds up, each request runs at one device's speed"))
    elif len(fleet.devices) > 1:
        options.append(Option("data-parallel", (), None, why_not="the model fits whole on fewer than two devices"))

    single_stream = [o for o in options if o.fits and o.kind != "data-parallel"]
    best = max(single_stream, key=_rank) if single_stream else None
    return Recommendation(model.name or model.path, tuple(options), best, _verdict(best, options), prompt_tokens)


def _verdict(best: Option | None, options: Sequence[Option]) -> str:
    if best is None:
        return "no option fits: " + "; ".join(f"{o.kind}: {o.why_not}" for o in options if o.why_not)
    where = ",".join(best.devices)
    line = f"{best.kind} split over {where}" if best.kind in ("layer", "tensor") else f"a single device ({where})"
    if not best.known:
        unknown = sorted({n for o in options if o.speed for n in o.speed.unknown})
        return (f"{line} fits, as do {', '.join(o.kind for o in options if o.fits and o is not best) or 'no other option'}; "
                f"speeds cannot be compared: {', '.join(unknown)} has no measured or stated speed "
                "(run `llamasplit bench --rpc ... --save inventory.json`, then --inventory)")
    others = [o for o in options if o.known and o is not best and o.kind != "data-parallel"]
    line = f"use {line}: {best.decode_tok_s:.0f} tok/s decode, {best.prefill_tok_s:.0f} tok/s prefill"
    if others:
        line += " vs " + ", ".join(f"{o.kind} {o.decode_tok_s:.0f}" for o in others)
    if best.kind == "tensor":
        share = best.speed.decode_comm_share
        line += f" (all-reduces take {share:.0%} of a token)"
    else:
        tensor = next((o for o in options if o.kind == "tensor"), None)
        if tensor is not None and tensor.known:
            line += f"; tensor split loses: all-reduces take {tensor.speed.decode_comm_share:.0%} of its token time"
        elif tensor is not None and tensor.why_not:
            line += f"; no tensor split: {tensor.why_not}"
    dp = next((o for o in options if o.kind == "data-parallel" and o.known), None)
    if dp is not None and dp.total_decode_tok_s > best.decode_tok_s:
        line += f"; for many concurrent requests one replica per GPU serves {dp.total_decode_tok_s:.0f} tok/s in total"
    return line
