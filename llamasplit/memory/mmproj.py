"""The multimodal projector (``--mmproj FILE``): where llama.cpp puts it and how much it takes.

Read from the pinned llama.cpp (``tools/mtmd``, ``tools/server``, ``common/arg.cpp``):

- **The file** (``model.projector``): a GGUF of arch ``clip`` (``clip_model_loader``). We plan the
  vision encoder; an audio-only projector is read but its compute is not modelled. A file with
  both encoders (``clip_init``) loads two contexts on the same backend: their weights are all the
  file's tensors (counted), the audio context's compute is not.
- **The device** (``clip_ctx::clip_ctx``): with ``use_gpu`` (``--mmproj-offload``, the default)
  and no ``-mmdev``/``-dev`` device, ``ggml_backend_init_by_type(GPU)``: the FIRST GPU-type device
  in ggml's registry (``ggml_backend_dev_by_type``). The registry lists the built-in backends'
  devices first (``ggml_backend_registry``: CUDA, Metal, ... before the CPU) and appends each
  ``--rpc`` server when the flag is parsed (``common/arg.cpp add_rpc_devices`` ->
  ``ggml_backend_register``); an RPC device's type is GPU (``ggml_backend_rpc_device_get_type``).
  So: CUDA0 if there is a local GPU, else the first ``--rpc`` worker, else the CPU. This differs
  from the model's order, which puts RPC devices first (``llama_prepare_model_devices``).
  ``--no-mmproj-offload`` (``params.mmproj_use_gpu = false``) keeps it on the CPU. With ``-dev``,
  ``common_params_parse`` defaults ``mmproj_device`` to ``devices.front()``.
- **Weights** (``load_tensors``): every tensor the projector type reads, in ONE buffer of the
  chosen backend's default buffer type (``ggml_backend_alloc_ctx_tensors_from_buft``: each tensor
  padded to the buffer's alignment, CUDA's padding of quantised rows included). llama-server logs
  no buffer line for them; ``load_hparams`` logs ``model size`` (the unpadded sum of every tensor
  in the file).
- **Compute** (``clip_model_loader::warmup`` -> ``reserve_compute_meta``): the graph for a dummy
  image of ``warmup_image_size`` square (``get_dummy_batch``; ``image_size`` unless the projector
  type sets it), reserved with ``ggml_backend_sched_reserve`` on ``[device, CPU]`` (one copy, op
  offload on). Logged as ``reserve_compute_meta: %10s compute buffer size = %8.2f MiB`` for every
  backend with more than 1 byte. With ``-fa auto`` (``CLIP_FLASH_ATTN_TYPE_AUTO``) flash attention
  is tried first and kept if the device runs ``FLASH_ATTN_EXT`` (``ggml_backend_supports_op``:
  always on the CPU and over RPC, which answers true for every op; on CUDA by head size).
  Inputs (``inp_raw``, the image, f32) start on the CPU (``ggml_backend_sched_backend_id_from_cur``).
- Not modelled: ``-mmdev DEVICE`` (we never pass it), ``--image-min/max-tokens`` (projector types
  with dynamic sizes; gemma3's image is fixed), and on CUDA a ``-fa auto`` warmup whose flash
  attention the device refuses: llama.cpp reserves twice and keeps the larger buffer
  (``ggml_gallocr_reserve_n`` only grows); we replay the second (flash attention off) graph.
- ``llama-server --fit on`` adds the projector's weights and compute to the fit margin of its
  device (``server_context::load_model``, ``mtmd_get_memory_usage``).

The compute graph is replayed (``memory/graph``: scheduler and allocator) for the
SigLIP-based projector types whose graph is ``clip_graph_siglip`` with ``build_vit``
(``tools/mtmd/models/siglip.cpp``): ``gemma3`` here. Other types get no compute figure (None) and
a note; their weights are still exact.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from llamasplit.devices.device import Device
from llamasplit.errors import ModelReadError
from llamasplit.gguf_constants import GGMLQuantizationType
from llamasplit.memory import cuda_rules, kv
from llamasplit.memory.graph.allocator import allocate_graph
from llamasplit.memory.graph.ggml import F16, F32, Graph, Ops, T
from llamasplit.memory.graph.scheduler import Backend, backends_of, schedule
from llamasplit.memory.weights import CPU_ALIGNMENT
from llamasplit.model.projector import ProjectorProfile, _fail
from llamasplit.untrusted import printable

REPLAYED_TYPES = frozenset({"gemma3", "idefics3"})
"""Projector types whose warmup graph is replayed (``clip_get_graph_builder`` -> ``clip_graph_siglip``)."""

def projector_device(devices: Sequence[Device], offload: bool = True) -> int | None:
    """Index in ``devices`` (llama.cpp's model order) of the device the projector goes to; None = CPU.

    ``ggml_backend_dev_by_type(GPU)`` over the registry: local GPUs first, then ``--rpc`` workers in
    the order given (see the module docstring).
    """
    if not offload:
        return None
    local = [i for i, d in enumerate(devices) if d.backend.upper() not in ("RPC", "CPU")]
    if local:
        return local[0]
    rpc = [i for i, d in enumerate(devices) if d.backend.upper() == "RPC"]
    return rpc[0] if rpc else None


@dataclass(frozen=True)
class ProjectorEstimate:
    """The projector's memory: weights on one backend, compute there and on the CPU."""

    proj_type: str
    device_index: int | None
    """Index into the devices given; None = the CPU."""
    weights_bytes: int
    compute_bytes: int | None
    """Compute buffer on the projector's device (the CPU when it is there); None = not modelled."""
    host_compute_bytes: int | None
    """The CPU's compute buffer when the projector is on a device (the image input); 0 when on the CPU."""
    flash_attn: bool
    image_size: int

    @property
    def device_bytes(self) -> int:
        """What the projector's device holds (weights + compute)."""
        return self.weights_bytes + (self.compute_bytes or 0)


def weights_bytes(profile: ProjectorProfile, backend: str) -> int:
    """The projector's weights buffer on ``backend`` (``ggml_backend_alloc_ctx_tensors_from_buft``:
    each tensor's alloc size padded to the buffer type's alignment)."""
    total = 0
    for t in profile.tensors:
        if backend == "CUDA":
            total += kv.pad(cuda_rules.tensor_alloc_bytes(t.ggml_type, t.shape[0], t.n_bytes), cuda_rules.ALIGNMENT)
        else:
            total += kv.pad(t.n_bytes, CPU_ALIGNMENT)
    return total


def _flash(profile: ProjectorProfile, flash_attn: str, backend: Backend) -> bool:
    """``warmup``: ``-fa auto`` tries flash attention and keeps it if the device runs the op."""
    if flash_attn == "off":
        return False
    if flash_attn == "on":
        return True
    if backend.kind == "CUDA":
        return profile.d_head in cuda_rules.FATTN_HEAD_SIZES and cuda_rules.FATTN_HEAD_SIZES[profile.d_head] is None
    return True


def _siglip_graph(profile: ProjectorProfile, owner: int, flash: bool) -> Graph:
    """``clip_graph_siglip::build`` (``build_inp``, ``build_vit``, then gemma3's pooled projection or
    idefics3's pixel shuffle and ``mm.model.fc``) at the warmup image, in ggml's op order; weights are leaves owned by backend ``owner``."""
    g = Graph()
    o = Ops(g)
    weights: dict[str, T] = {}
    by_name = {t.name: t for t in profile.tensors}

    def w(name: str, required: bool = True) -> T | None:
        if name in weights:
            return weights[name]
        info = by_name.get(name)
        if info is None:
            if required:
                raise _fail(profile.path, f"missing tensor {name}")
            return None
        t = T(g, "NONE", info.ggml_type, info.shape)
        t.name, t.owner, t.weights = name, owner, True
        weights[name] = t
        return t

    sz, P, E = profile.warmup_image_size, profile.patch_size, profile.n_embd
    npx = sz // P
    n_pos = npx * npx
    H, Hkv, D = profile.n_head, profile.n_head_kv, profile.d_head
    if n_pos <= 0 or H <= 0 or D <= 0:
        raise _fail(profile.path, f"image {sz} / patch {P} gives no patches, or no attention heads")
    # build_inp_raw + build_inp: ggml_conv_2d = im2col (f16) -> mul_mat -> reshape -> cont(permute)
    inp_raw = o.input("inp_raw", F32, [sz, sz, 3, 1])
    kernel = w("v.patch_embd.weight")
    assert kernel is not None
    if kernel.ne[0] != P or kernel.ne[1] != P or kernel.ne[2] != 3:
        raise _fail(profile.path, f"v.patch_embd.weight is {kernel.ne[:4]}, not {P} x {P} x 3 x n_embd")
    col_t = F32 if kernel.type == int(GGMLQuantizationType.BF16) else F16
    im2col = o.new("IM2COL", col_t, [3 * P * P, npx, npx, 1], kernel, inp_raw)
    a2 = o.reshape(im2col, im2col.ne[0], npx * npx)
    k2 = o.reshape(kernel, P * P * 3, kernel.ne[3])
    res = o.mul_mat(a2, k2)
    res = o.reshape(res, npx, npx, 1, kernel.ne[3])
    inp = o.cont(o.permute(res, 0, 1, 3, 2))
    inp = o.reshape(inp, n_pos, E, 1)
    inp = o.cont(o.transpose(inp))
    bias = w("v.patch_embd.bias", False)
    if bias is not None:
        inp = o.binary("ADD", inp, bias)
    # build_vit
    pos = w("v.position_embd.weight", False)
    if pos is not None:
        inp = o.binary("ADD", inp, pos)
    inp = o.reshape(inp, E, n_pos)
    inpL = inp

    def norm(cur: T, wn: str, bn: str) -> T:
        cur = o.dup("NORM", cur, cur)  # ggml_norm (NORM_TYPE_NORMAL)
        mw, mb = w(wn, False), w(bn, False)
        if mw is not None:
            cur = o.binary("MUL", cur, mw)
        if mb is not None:
            cur = o.binary("ADD", cur, mb)
        return cur

    def mm(cur: T, stem: str) -> T:
        cur = o.mul_mat(w(stem + ".weight"), cur)  # type: ignore[arg-type]
        b = w(stem + ".bias", False)
        return o.binary("ADD", cur, b) if b is not None else cur

    pre = w("v.pre_ln.weight", False)
    if pre is not None:
        inpL = norm(inpL, "v.pre_ln.weight", "v.pre_ln.bias")
    for il in range(profile.n_layer):
        b = f"v.blk.{il}."
        cur = norm(inpL, b + "ln1.weight", b + "ln1.bias")
        q = o.reshape(mm(cur, b + "attn_q"), D, H, n_pos, 1)
        k = o.reshape(mm(cur, b + "attn_k"), D, Hkv, n_pos, 1)
        v = o.reshape(mm(cur, b + "attn_v"), D, Hkv, n_pos, 1)
        # build_attn: ggml_build_forward_order(q), (k), (v) fixes their order in the graph
        for t in (q, k, v):
            g.expand(t)
        qp = o.permute(q, 0, 2, 1, 3)
        kp = o.permute(k, 0, 2, 1, 3)
        if flash:
            vp = o.permute(v, 0, 2, 1, 3)
            kc = o.cast(kp, F16)
            vc = o.cast(vp, F16)
            cur = o.flash_attn_ext(qp, kc, vc, None)
            cur = o.reshape(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        else:
            vc = o.cont(o.permute(v, 1, 2, 0, 3))
            kq = o.mul_mat(kp, qp)
            kq = o.soft_max(kq, None)
            kqv = o.mul_mat(vc, kq)
            cur = o.permute(kqv, 0, 2, 1, 3)
            cur = o.cont(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        cur = mm(cur, b + "attn_out")
        cur = o.binary("ADD", cur, inpL)
        inpL = cur
        cur = norm(cur, b + "ln2.weight", b + "ln2.bias")
        cur = mm(cur, b + "ffn_up")
        if w(b + "ffn_gate.weight", False) is not None:
            raise _fail(profile.path, "a gated vision FFN is not replayed")
        cur = o.unary("UNARY", cur)  # ggml_gelu / ggml_silu / ggml_gelu_quick
        cur = mm(cur, b + "ffn_down")
        cur = o.binary("ADD", inpL, cur)
        inpL = cur
    if w("v.post_ln.weight", False) is not None:
        inpL = norm(inpL, "v.post_ln.weight", "v.post_ln.bias")
    cur = o.reshape(inpL, E, n_pos, 1)
    if profile.proj_type == "idefics3":
        # build_patch_merge_permute (pixel shuffle by n_merge), then build_mm(mm.model.fc)
        sf = profile.n_merge
        if sf <= 1:
            raise _fail(profile.path, f"idefics3 needs a scale_factor above 1, not {sf}")
        width = height = npx
        cur = o.reshape(cur, E, width, height)
        pad = (-width) % sf
        if pad:
            width += pad
            height += pad
            cur = o.new("PAD", cur.type, [E, width, height, 1], cur)
        cur = o.reshape(cur, E * sf, width // sf, height)
        cur = o.permute(cur, 0, 2, 1, 3)
        cur = o.cont(cur, E * sf * sf, height // sf, width // sf)
        cur = o.permute(cur, 0, 2, 1, 3)
        cur = o.cont(cur, cur.ne[0], cur.ne[1] * cur.ne[2])
        cur = o.mul_mat(w("mm.model.fc.weight"), cur)  # type: ignore[arg-type]
        g.expand(cur)
        return g
    # gemma3: avg-pool the patch grid by n_merge, RMS norm, project
    k_sz = profile.n_merge
    cur = o.transpose(cur)
    cur = o.cont(cur, npx, npx, E, 1)
    side = (npx - k_sz) // k_sz + 1  # ggml_calc_pool_output_size, no padding
    if side <= 0:
        raise _fail(profile.path, f"scale_factor {k_sz} is larger than the {npx}-patch side")
    cur = o.new("POOL_2D", F32, [side, side, E, 1], cur)
    cur = o.reshape(cur, side * side, E, 1)
    cur = o.cont(o.transpose(cur))
    cur = o.rms_norm(cur)
    cur = o.binary("MUL", cur, w("mm.soft_emb_norm.weight"))  # type: ignore[arg-type]
    proj = w("mm.input_projection.weight")
    assert proj is not None
    pt = o.cont(o.transpose(proj))
    cur = o.mul_mat(pt, cur)
    g.expand(cur)
    return g


def estimate_projector(profile: ProjectorProfile, devices: Sequence[Device], *, offload: bool = True,
                       flash_attn: str = "auto") -> ProjectorEstimate:
    """The projector's weights and warmup compute on the device llama.cpp picks from ``devices``."""
    index = projector_device(devices, offload)
    backends = (Backend("CPU", CPU_ALIGNMENT, False, True),) if index is None else tuple(backends_of([devices[index]]))
    return dataclasses.replace(_estimate_on(profile, backends, flash_attn), device_index=index)


@functools.lru_cache(maxsize=64)
def _estimate_on(profile: ProjectorProfile, backends: tuple[Backend, ...], flash_attn: str) -> ProjectorEstimate:
    """The projector on ``backends[0]`` (the CPU last); cached: the planner asks once per trial split."""
    index = None if len(backends) == 1 else 0
    w_bytes = weights_bytes(profile, "CPU" if index is None else backends[0].alloc or backends[0].kind)
    owner = 0
    flash = _flash(profile, flash_attn, backends[owner])
    compute: int | None = None
    host: int | None = None
    if profile.has_vision and profile.proj_type in REPLAYED_TYPES:
        graph = _siglip_graph(profile, owner, flash)
        nodes, node_b, leafs, leaf_b = schedule(graph, list(backends), {}, 1)
        sizes = allocate_graph(nodes, node_b, leafs, leaf_b, list(backends), len(graph.all))
        compute = sizes[0]
        host = 0 if index is None else sizes[-1]
    return ProjectorEstimate(
        proj_type=profile.proj_type, device_index=index, weights_bytes=w_bytes, compute_bytes=compute,
        host_compute_bytes=host, flash_attn=flash, image_size=profile.warmup_image_size,
    )


def output_embd(profile: ProjectorProfile) -> int | None:
    """``clip_n_mmproj_embd``: the width of the embeddings the projector hands the text model
    (gemma3: ``mm.input_projection.weight`` ne[0]); None where we do not know the type's rule."""
    if profile.proj_type == "gemma3":
        t = profile.tensor("mm.input_projection.weight")
        return t.shape[0] if t is not None else None
    if profile.proj_type == "idefics3":
        t = profile.tensor("mm.model.fc.weight")
        return t.shape[1] if t is not None and len(t.shape) > 1 else None
    return None


def check_projector(profile: ProjectorProfile, model) -> list[str]:
    """What llama.cpp refuses (one ModelReadError line) and the notes a plan with this projector gets.

    ``mtmd_context::mtmd_context``: "mismatch between text model (n_embd = %d) and mmproj (n_embd = %d)".
    """
    width = output_embd(profile)
    if width is not None and width != model.hparams.n_embd:
        raise ModelReadError(
            f"{profile.path}: the projector makes {width}-wide embeddings, the model takes {model.hparams.n_embd} "
            "(llama.cpp refuses it: tools/mtmd/mtmd.cpp, mismatch between text model and mmproj)",
            remedy="give the mmproj file made for this model")
    notes = []
    if not profile.has_vision:
        notes.append(f"projector {printable(profile.proj_type, limit=40)}: audio only, its compute is not modelled")
    elif profile.proj_type not in REPLAYED_TYPES:
        notes.append(f"projector type {printable(profile.proj_type, limit=40)}: weights exact, warmup compute not "
                     "modelled (replayed: " + ", ".join(sorted(REPLAYED_TYPES)) + ")")
    return notes
