"""``llamasplit plan -hf user/repo --quants``: every GGUF variant of a repo, read header-only and ranked for the fleet."""

from __future__ import annotations

import json
import shlex
from concurrent.futures import ThreadPoolExecutor

from llamasplit.cli.app import say
from llamasplit.devices.device import Fleet
from llamasplit.planner.plan import PlanOptions
from llamasplit.units import format_size


def _label(files, all_files) -> tuple[str, list[str]]:
    """The shortest way to ask for this variant: ``-hf repo:TAG`` when llama.cpp's matching picks
    exactly this file for the tag, else ``--hf-file PATH``."""
    from llamasplit.model import hub

    primary = files[0]
    tag = hub.tag_of(primary.path)
    if tag and hub.find_best_model(all_files, tag) == primary:
        return tag, [f":{tag}"]
    return primary.path, ["--hf-file", primary.path]


def rank_repo(spec: str, fleet: Fleet, options: PlanOptions, *, as_json: bool = False, workers: int = 4) -> str:
    """Read the header of every model file in the repo (4 at a time), plan each, rank, and say how to run the best."""
    from llamasplit.model import hub
    from llamasplit.model.header_cache import HeaderCache
    from llamasplit.model.locate import read_hub_model
    from llamasplit.model.remote import RemoteOptions, Transfer
    from llamasplit.planner.variants import rank

    from llamasplit.model.remote import quiet_hub_logs

    quiet_hub_logs()
    ref = hub.parse_hf(spec)
    all_files = hub.list_files(ref)
    groups = hub.variants(all_files)
    if not groups:
        from llamasplit.errors import ModelReadError

        raise ModelReadError(f"{hub.clean(ref.repo)}: no GGUF model file in the repository", remedy="check the repo name")
    cache, options_r = HeaderCache(), RemoteOptions()
    transfers = [Transfer() for _ in groups]

    def read(i: int):
        return read_hub_model(ref, groups[i], options=options_r, transfer=transfers[i], cache=cache)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(groups)))) as pool:
        profiles = list(pool.map(read, range(len(groups))))
    sent = sum(t.body_bytes for t in transfers)
    say(f"llamasplit: read {len(groups)} variants of {ref.repo}: {format_size(sent)} of headers in "
        f"{sum(t.requests for t in transfers)} requests, no weights")
    labels = {id(p): _label(g, all_files) for p, g in zip(profiles, groups)}
    ranked = rank([(labels[id(p)][0], p) for p in profiles], fleet, options)
    best = ranked[0] if ranked and ranked[0].fits else None
    selector = None
    if best is not None:
        extra = labels[id(best.profile)][1]
        selector = ["-hf", ref.repo + extra[0]] if extra[0].startswith(":") else ["-hf", ref.repo, *extra]
    if as_json:
        rows = [{
            "variant": v.label, "file": v.profile.path, "file_type": v.profile.file_type_name,
            "tensor_bytes": v.profile.tensor_bytes, "file_bytes": v.profile.file_bytes, "fits": v.fits,
            "n_ctx": v.n_ctx, "decode_tok_s": v.decode_tok_s, "why_not": v.why_not,
            "plan": v.plan.to_dict() if v.plan else None,
        } for v in ranked]
        return json.dumps({"repo": ref.repo, "variants": rows,
                           "best": best.label if best else None,
                           "command": _run_command(selector, best) if best else None}, indent=2)
    lines = [f"{'variant':<28} {'weights':>10} {'fits':>5} {'context':>8} {'tok/s':>8}"]
    for v in ranked:
        ctx = f"{v.n_ctx}" if v.fits else "-"
        speed = f"{v.decode_tok_s:.1f}" if v.decode_tok_s else "-"
        lines.append(f"{hub.clean(v.label, 28):<28} {format_size(v.profile.tensor_bytes):>10} {'yes' if v.fits else 'no':>5} "
                     f"{ctx:>8} {speed:>8}")
    if best is None:
        lines.append("nothing in this repo fits these devices (plan one variant for the shortfall: -hf REPO:TAG)")
        return "\n".join(lines)
    lines.append(f"best for these devices: {best.label} (fits, context {best.n_ctx}, the most precise weights at that context)")
    lines.append("fetch and run: " + _run_command(selector, best))
    env = [f"{k}={shlex.quote(v)}" for k, v in best.plan.cuda_env().items()]  # the plan's device order
    lines.append("or with llama.cpp alone: " + " ".join(
        [*env, *(shlex.quote(a) for a in [best.plan.settings.binary, *selector, *best.plan.to_llama_args()])]))
    return "\n".join(lines)


def _run_command(selector: list[str], best) -> str:
    # run downloads the file, then plans it again on this machine: the same plan for the same devices
    return " ".join(shlex.quote(a) for a in ["llamasplit", "run", *selector, "-c", str(best.n_ctx)])
