"""The llama.cpp-shaped options `plan` and `run` share: one definition of each flag's names and help.

Commands declare them as ``ctx: Ctx = None``; the default stays in the signature (typer's rule for
``Annotated`` options), and ``build_options`` in ``cli/plan.py`` maps them onto ``PlanOptions``.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Fleet = Annotated[Optional[str], typer.Option("--fleet", help="Plan for simulated GPUs, e.g. 2x3090,3060-12g.")]
Inventory = Annotated[Optional[str], typer.Option("--inventory", help="Plan for a saved inventory (llamasplit gpus --save).")]
Rpc = Annotated[Optional[str], typer.Option(
    "--rpc", help="RPC workers host:port,... (their devices come first); host:port=3090 says what a plain "
                  "ggml-rpc-server serves (=2x3090, =3090+4090, =cpu); a llamasplit worker publishes it.")]
Ctx = Annotated[Optional[int], typer.Option("--ctx", "-c", help="Context length (default: the longest that fits).")]
Ngl = Annotated[Optional[str], typer.Option("--n-gpu-layers", "-ngl", help="Fix -ngl instead of searching.")]
Ts = Annotated[Optional[str], typer.Option("--tensor-split", "-ts", help="Fix -ts instead of searching.")]
Ctk = Annotated[str, typer.Option("--cache-type-k", "-ctk")]
Ctv = Annotated[str, typer.Option("--cache-type-v", "-ctv")]
Fa = Annotated[str, typer.Option("--flash-attn", "-fa", help="on|off|auto")]
Ub = Annotated[int, typer.Option("--ubatch-size", "-ub")]
B = Annotated[int, typer.Option("--batch-size", "-b")]
Np = Annotated[Optional[int], typer.Option("--parallel", "-np")]
Margin = Annotated[str, typer.Option("--margin", help="Memory kept free per device: 1GiB, or 1GiB,CUDA1=3GiB.")]
SwaFull = Annotated[bool, typer.Option("--swa-full")]
Nkvo = Annotated[bool, typer.Option("--no-kv-offload", "-nkvo")]
NoMmap = Annotated[bool, typer.Option("--no-mmap", help="Load weights into memory (llama.cpp -lm none).")]
Ot = Annotated[Optional[list[str]], typer.Option("--override-tensor", "-ot", help="pattern=BUFFER, as llama.cpp.")]
CpuMoe = Annotated[bool, typer.Option("--cpu-moe", "-cmoe")]
NCpuMoe = Annotated[int, typer.Option("--n-cpu-moe", "-ncmoe")]
Hf = Annotated[Optional[str], typer.Option("--hf-repo", "-hf", "-hfr",
                                           help="A Hugging Face repo as llama.cpp's -hf takes it: user/repo[:quant] (headers read remotely).")]
HfFile = Annotated[Optional[str], typer.Option("--hf-file", "-hff", help="The exact file in the -hf repo (overrides the quant).")]
Mmproj = Annotated[Optional[str], typer.Option(
    "--mmproj", "-mm", help="A multimodal projector (file or URL) planned beside the model; auto: the mmproj "
                            "GGUF beside the model, or the one llama.cpp's -hf takes from the repo.")]
NoMmprojOffload = Annotated[bool, typer.Option("--no-mmproj-offload", help="Keep the projector on the CPU (as llama.cpp).")]
SplitMode = Annotated[str, typer.Option(
    "--split-mode", "-sm",
    help="layer (default), none, tensor (that plan, with its speed when predictable), or auto: "
         "the faster of layer and tensor split by the speed model (plan -sm auto also compares one device and replicas).")]
# the draft model for speculative decoding (common/arg.cpp --spec-draft-*) and LoRA adapters
Md = Annotated[Optional[str], typer.Option(
    "--spec-draft-model", "-md", "--model-draft",
    help="A draft model for speculative decoding, planned with the model (its weights, KV and compute per device).")]
Ngld = Annotated[Optional[str], typer.Option(
    "--spec-draft-ngl", "-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft",
    help="Draft layers on the devices (default: all, as llama.cpp).")]
Devd = Annotated[Optional[str], typer.Option(
    "--spec-draft-device", "-devd", "--device-draft",
    help="The draft's devices, comma-separated llama.cpp names, or none (default: the model's devices).")]
Ctkd = Annotated[str, typer.Option("--spec-draft-type-k", "-ctkd", "--cache-type-k-draft", help="The draft's K cache type.")]
Ctvd = Annotated[str, typer.Option("--spec-draft-type-v", "-ctvd", "--cache-type-v-draft", help="The draft's V cache type.")]
Otd = Annotated[Optional[list[str]], typer.Option(
    "--spec-draft-override-tensor", "-otd", "--override-tensor-draft", help="pattern=BUFFER for the draft model.")]
Cmoed = Annotated[bool, typer.Option("--spec-draft-cpu-moe", "-cmoed", "--cpu-moe-draft")]
Ncmoed = Annotated[int, typer.Option("--spec-draft-n-cpu-moe", "--spec-draft-ncmoe", "-ncmoed", "--n-cpu-moe-draft")]
DraftNMax = Annotated[int, typer.Option("--spec-draft-n-max", help="Tokens to draft per step (llama.cpp's default 3).")]
SpecType = Annotated[Optional[str], typer.Option(
    "--spec-type", help="Speculative decoding types, comma-separated as llama.cpp; draft-mtp drafts with the model's "
                        "NextN blocks (planned with their weights and the MTP context's KV and buffers).")]
Lora = Annotated[Optional[list[str]], typer.Option("--lora", help="A LoRA adapter (repeatable; comma-separated as llama.cpp).")]
LoraScaled = Annotated[Optional[list[str]], typer.Option("--lora-scaled", help="FILE:SCALE, a LoRA adapter with its scale (repeatable).")]
