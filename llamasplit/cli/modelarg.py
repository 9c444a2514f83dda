"""The model argument every command takes: a path, an ``http(s)://`` URL, or ``-hf user/repo[:quant]``
with ``--hf-file``; remote ones are read header-only and the transfer is said on stderr."""

from __future__ import annotations

from llamasplit.cli.app import say
from llamasplit.model.profile import ModelProfile


def read_cli_model(model: str | None, hf: str | None = None, hf_file: str | None = None, *,
                   local_reader=None) -> ModelProfile:
    """The model's profile; a local file through ``local_reader`` (the CLI's cached reader)."""
    from llamasplit.model.locate import model_source, open_model

    src = model_source(model, hf=hf, hf_file=hf_file)
    if src.kind == "file":
        if local_reader is None:
            from llamasplit.model.profile import read_model as local_reader
        return local_reader(src.location)
    from llamasplit.model.remote import Transfer, quiet_hub_logs
    from llamasplit.units import format_size

    quiet_hub_logs()

    transfer = Transfer()
    profile = open_model(src, transfer=transfer)
    from llamasplit.untrusted import printable

    n = len(profile.files)
    what = f"{n} headers" if n > 1 else "the header"
    if transfer.cached and len(transfer.cached) == n:
        say(f"llamasplit: {what} of {printable(profile.path, 300)} from the header cache (file unchanged)")
    else:
        say(f"llamasplit: read {what} of {printable(profile.path, 300)} remotely: {format_size(transfer.body_bytes)} "
            f"in {transfer.requests} requests, no weights")
    return profile
