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

The warmup graph is replayed (``_Clip``, through ``memory/graph``'s scheduler and allocator) for
``gemma3`` and ``idefics3`` (``models/siglip.cpp``: ``build_vit`` then the pooled projection, or the
pixel shuffle), LLaVA-1.5's ``mlp`` (``models/llava.cpp``) and ``pixtral`` (``models/pixtral.cpp``).
The first three take images of one size (or tiles of it, encoded one at a time:
``clip_graph_siglip`` does not batch), so the warmup is the largest reservation. Pixtral's warmup
is 16 x 16 merged patches but it takes up to 1024 tokens: its graph is replayed at that largest
image too, and the difference is part ``mmproj_compute_growth`` (the allocator only grows, on the
first such image). ``benchmarks/mmproj_accuracy.py --growth``: 94/94 buffers the same 0.01 MiB as
llama-server, the worker's allocations (the grown one after a real request included) the same byte. Other types get a guide
(``_Clip.vit``: ``build_inp`` and the standard blocks at ``largest_image``, the largest image the
type accepts; part ``mmproj_compute_estimate``), or None where the tower is not standard; their weights
are exact.
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
from llamasplit.memory.graph.ggml import F16, F32, I32, Graph, Ops, T
from llamasplit.memory.graph.scheduler import Backend, backends_of, schedule
from llamasplit.memory.weights import CPU_ALIGNMENT
from llamasplit.model.projector import ProjectorProfile, _fail
from llamasplit.untrusted import printable

REPLAYED_TYPES = frozenset({"gemma3", "idefics3", "mlp", "pixtral"})
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
    estimated: bool = False
    """The compute is a guide (``_Clip.vit`` at ``largest_image``), not a replay."""
    growth_bytes: int = 0
    """Replayed types that take larger images than their warmup's (pixtral): what the device's compute
    buffer grows by at the largest one (``largest_image``), beyond ``compute_bytes``."""
    host_growth_bytes: int = 0
    largest_image: int | None = None

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


def _flash(profile: ProjectorProfile, flash_attn: str, backend: Backend, n_pos: int) -> bool:
    """``warmup``: ``-fa auto`` tries flash attention and keeps it if the device runs the op
    (``ggml_backend_supports_op``: the CPU always, RPC answers true for every op, CUDA when
    ``ggml_cuda_get_best_fattn_kernel`` finds a kernel: f16 K/V of ``n_pos`` patches, no mask)."""
    if flash_attn == "off":
        return False
    if flash_attn == "on":
        return True
    if backend.kind == "CUDA":
        kernel = cuda_rules.best_fattn_kernel(
            backend.cc if backend.cc is not None else cuda_rules.CC_TURING, head_k=profile.d_head,
            head_v=profile.d_head, n_tokens=n_pos, gqa_ratio=max(profile.n_head // max(profile.n_head_kv, 1), 1),
            n_kv=n_pos, type_k=F16, type_v=F16, has_mask=False)
        return kernel is not cuda_rules.FattnKernel.NONE
    return True


class _Clip:
    """``clip_graph`` (tools/mtmd/clip.cpp) for one projector at its warmup image: the shared pieces
    (``build_inp``, ``build_norm``, ``build_attn``, ``build_ffn``) in ggml's op order; weights are
    leaves owned by backend ``owner``."""

    def __init__(self, profile: ProjectorProfile, owner: int, flash: bool, image: int | None = None) -> None:
        self.p, self.owner, self.flash = profile, owner, flash
        self.g = Graph()
        self.o = Ops(self.g)
        self.weights: dict[str, T] = {}
        self.by_name = {t.name: t for t in profile.tensors}
        self.image = sz = image or warmup_image(profile)
        self.pos: tuple[T, T] | None = None  # pixtral's 2D rope positions (pos_h, pos_w)
        P = profile.patch_size
        self.npx = sz // P
        self.n_patches = self.npx * self.npx
        if self.n_patches <= 0 or profile.n_head <= 0 or profile.d_head <= 0:
            raise _fail(profile.path, f"image {sz} / patch {P} gives no patches, or no attention heads")

    def w(self, name: str, required: bool = True) -> T | None:
        if name in self.weights:
            return self.weights[name]
        info = self.by_name.get(name)
        if info is None:
            if required:
                raise _fail(self.p.path, f"missing tensor {name}")
            return None
        t = T(self.g, "NONE", info.ggml_type, info.shape)
        t.name, t.owner, t.weights = name, self.owner, True
        self.weights[name] = t
        return t

    def inp(self) -> T:
        """``build_inp_raw`` + ``build_inp``: ggml_conv_2d = im2col (f16) -> mul_mat -> reshape ->
        cont(permute), then [n_embd, n_patches] and the patch bias."""
        o, P, E, npx, sz = self.o, self.p.patch_size, self.p.n_embd, self.npx, self.image
        inp_raw = o.input("inp_raw", F32, [sz, sz, 3, 1])
        kernel = self.w("v.patch_embd.weight")
        assert kernel is not None
        if kernel.ne[0] != P or kernel.ne[1] != P or kernel.ne[2] != 3:
            raise _fail(self.p.path, f"v.patch_embd.weight is {kernel.ne[:4]}, not {P} x {P} x 3 x n_embd")
        col_t = F32 if kernel.type == int(GGMLQuantizationType.BF16) else F16
        im2col = o.new("IM2COL", col_t, [3 * P * P, npx, npx, 1], kernel, inp_raw)
        res = o.mul_mat(o.reshape(im2col, im2col.ne[0], npx * npx), o.reshape(kernel, P * P * 3, kernel.ne[3]))
        res = o.reshape(res, npx, npx, 1, kernel.ne[3])
        cur = o.cont(o.permute(res, 0, 1, 3, 2))
        cur = o.reshape(cur, self.n_patches, E, 1)
        cur = o.cont(o.transpose(cur))
        bias = self.w("v.patch_embd.bias", False)
        return o.binary("ADD", cur, bias) if bias is not None else cur

    def norm(self, cur: T, stem: str) -> T:
        """``build_norm``: ggml_norm (NORM_TYPE_NORMAL; ggml_rms_norm for pixtral's NORM_TYPE_RMS),
        times the weight, plus the bias."""
        o = self.o
        cur = o.rms_norm(cur) if self.p.proj_type == "pixtral" else o.dup("NORM", cur, cur)
        mw, mb = self.w(stem + ".weight", False), self.w(stem + ".bias", False)
        if mw is not None:
            cur = o.binary("MUL", cur, mw)
        if mb is not None:
            cur = o.binary("ADD", cur, mb)
        return cur

    def mm(self, cur: T, stem: str) -> T:
        cur = self.o.mul_mat(self.w(stem + ".weight"), cur)  # type: ignore[arg-type]
        b = self.w(stem + ".bias", False)
        return self.o.binary("ADD", cur, b) if b is not None else cur

    def attn(self, cur: T, il: int, n_pos: int) -> T:
        """Q/K/V, ``build_attn`` (flash or f32 KQ), the output projection."""
        o, b = self.o, f"v.blk.{il}."
        H, Hkv, D = self.p.n_head, self.p.n_head_kv, self.p.d_head
        if self.w(b + "attn_qkv.weight", False) is not None or self.w(b + "attn_q_norm.weight", False) is not None:
            raise _fail(self.p.path, "a fused QKV or Q/K norms in the vision tower are not replayed")
        q = o.reshape(self.mm(cur, b + "attn_q"), D, H, n_pos, 1)
        k = o.reshape(self.mm(cur, b + "attn_k"), D, Hkv, n_pos, 1)
        v = o.reshape(self.mm(cur, b + "attn_v"), D, Hkv, n_pos, 1)
        if self.pos is not None:
            # build_vit's add_pos (pixtral: build_rope_2d, a rope on each half of the head by row and column)
            q = o.rope(o.rope(q, self.pos[0], None), self.pos[1], None)
            k = o.rope(o.rope(k, self.pos[0], None), self.pos[1], None)
        for t in (q, k, v):  # build_attn: ggml_build_forward_order(q), (k), (v)
            self.g.expand(t)
        qp, kp = o.permute(q, 0, 2, 1, 3), o.permute(k, 0, 2, 1, 3)
        if self.flash:
            vp = o.permute(v, 0, 2, 1, 3)
            kc, vc = o.cast(kp, F16), o.cast(vp, F16)
            cur = o.flash_attn_ext(qp, kc, vc, None)
            cur = o.reshape(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        else:
            vc = o.cont(o.permute(v, 1, 2, 0, 3))
            kq = o.soft_max(o.mul_mat(kp, qp), None)
            cur = o.permute(o.mul_mat(vc, kq), 0, 2, 1, 3)
            cur = o.cont(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        return self.mm(cur, b + "attn_out")

    def ffn(self, cur: T, il: int) -> T:
        """``build_ffn``: up (+bias); with a gate, gate (+bias) and the split GLU (swiglu/geglu:
        ``GLU(gate, up)``), else the activation (a UNARY op); down (+bias)."""
        b = f"v.blk.{il}."
        up, down = self.w(b + "ffn_up.weight"), self.w(b + "ffn_down.weight")
        assert up is not None and down is not None
        if self.p.proj_type in _SWAPPED_FFN_TYPES and down.ne[0] == self.p.n_embd:
            up_stem, down_stem = b + "ffn_down", b + "ffn_up"  # load_tensors: old conversions swapped them
        else:
            up_stem, down_stem = b + "ffn_up", b + "ffn_down"
        tmp = self.mm(cur, up_stem)
        if self.w(b + "ffn_gate.weight", False) is not None:
            cur = self.o.glu(self.mm(cur, b + "ffn_gate"), tmp)
        else:
            cur = self.o.unary("UNARY", tmp)
        return self.mm(cur, down_stem)

    def layer(self, inpL: T, il: int, n_pos: int) -> T:
        """One pre-norm transformer block (``build_vit``'s loop body; llava's is the same)."""
        cur = self.attn(self.norm(inpL, f"v.blk.{il}.ln1"), il, n_pos)
        inpL = self.o.binary("ADD", cur, inpL)
        cur = self.ffn(self.norm(inpL, f"v.blk.{il}.ln2"), il)
        return self.o.binary("ADD", inpL, cur)

    def siglip(self) -> Graph:
        """``clip_graph_siglip::build``: ``build_vit``, then gemma3's pooled projection or idefics3's
        pixel shuffle and ``mm.model.fc``."""
        o, p, E, npx, n_pos = self.o, self.p, self.p.n_embd, self.npx, self.n_patches
        cur = self.inp()
        pos = self.w("v.position_embd.weight", False)
        if pos is not None:
            cur = o.binary("ADD", cur, pos)
        cur = o.reshape(cur, E, n_pos)
        if self.w("v.pre_ln.weight", False) is not None:
            cur = self.norm(cur, "v.pre_ln")
        for il in range(p.n_layer):
            cur = self.layer(cur, il, n_pos)
        if self.w("v.post_ln.weight", False) is not None:
            cur = self.norm(cur, "v.post_ln")
        cur = o.reshape(cur, E, n_pos, 1)
        sf = p.n_merge
        if p.proj_type == "idefics3":
            # build_patch_merge_permute (pixel shuffle by n_merge), then build_mm(mm.model.fc)
            if sf <= 1:
                raise _fail(p.path, f"idefics3 needs a scale_factor above 1, not {sf}")
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
            cur = o.mul_mat(self.w("mm.model.fc.weight"), cur)  # type: ignore[arg-type]
        else:
            # gemma3: avg-pool the patch grid by n_merge, RMS norm, project
            cur = o.cont(o.transpose(cur), npx, npx, E, 1)
            side = (npx - sf) // sf + 1  # ggml_calc_pool_output_size, no padding
            if side <= 0:
                raise _fail(p.path, f"scale_factor {sf} is larger than the {npx}-patch side")
            cur = o.new("POOL_2D", F32, [side, side, E, 1], cur)
            cur = o.reshape(cur, side * side, E, 1)
            cur = o.rms_norm(o.cont(o.transpose(cur)))
            cur = o.binary("MUL", cur, self.w("mm.soft_emb_norm.weight"))  # type: ignore[arg-type]
            cur = o.mul_mat(o.cont(o.transpose(self.w("mm.input_projection.weight"))), cur)  # type: ignore[arg-type]
        self.g.expand(cur)
        return self.g

    def llava(self) -> Graph:
        """``clip_graph_llava::build`` for PROJECTOR_TYPE_MLP (LLaVA-1.5/1.6): the class embedding, learned
        positions through ``get_rows``, every block but the last (the feature layer is the second to
        last), the post norm, the patch rows, ``mm.0`` + GELU + ``mm.2``."""
        o, p = self.o, self.p
        if p.feature_layers:
            raise _fail(p.path, "explicit vision feature layers (granite-vision) are not replayed")
        cls = self.w("v.class_embd", False)
        n_pos = self.n_patches + (1 if cls is not None else 0)
        cur = self.inp()
        if cls is not None:
            cur = o.concat(cur, cls, 1)
        positions = o.input("positions", I32, [n_pos])
        cur = o.binary("ADD", cur, o.get_rows(self.w("v.position_embd.weight"), positions))  # type: ignore[arg-type]
        if self.w("v.pre_ln.weight", False) is not None:
            cur = self.norm(cur, "v.pre_ln")
        for il in range(p.n_layer - 1):
            cur = self.layer(cur, il, n_pos)
        if self.w("v.post_ln.weight", False) is not None:
            cur = self.norm(cur, "v.post_ln")
        cur = o.reshape(cur, cur.ne[0], cur.ne[1])
        patches = o.input("patches", I32, [self.n_patches])
        cur = o.get_rows(cur, patches)
        cur = self.mm(cur, "mm.0")
        cur = o.unary("UNARY", cur)
        if self.w("mm.2.weight", False) is not None:
            cur = self.mm(cur, "mm.2")
        self.g.expand(cur)
        return self.g


    def vit(self) -> Graph:
        """A guide for the types not replayed: ``build_inp`` and the standard blocks (no position
        embeddings, no projector), at ``image``."""
        cur = self.o.reshape(self.inp(), self.p.n_embd, self.n_patches)
        for il in range(self.p.n_layer):
            cur = self.layer(cur, il, self.n_patches)
        self.g.expand(cur)
        return self.g


    def pixtral(self) -> Graph:
        """``clip_graph_pixtral::build``: 2D rope instead of learned positions, RMS norms, a SwiGLU
        tower, Mistral-Small-3.1's patch merger (when the file has it), the LLaVA MLP (GELU), and an
        ``[IMG_BREAK]`` row appended per image row."""
        o, p, E, npx = self.o, self.p, self.p.n_embd, self.npx
        m = p.spatial_merge_size or 1
        self.pos = (o.input("pos_h", I32, [self.n_patches]), o.input("pos_w", I32, [self.n_patches]))
        cur = o.reshape(self.inp(), E, self.n_patches)
        if self.w("v.pre_ln.weight", False) is not None:
            cur = self.norm(cur, "v.pre_ln")
        for il in range(p.n_layer):
            cur = self.layer(cur, il, self.n_patches)
        if self.w("v.post_ln.weight", False) is not None:
            cur = self.norm(cur, "v.post_ln")
        cur = o.reshape(cur, E, self.n_patches, 1)
        merger = self.w("mm.patch_merger.weight", False)
        if merger is not None:
            cur = o.binary("MUL", o.rms_norm(cur), self.w("mm.input_norm.weight"))  # type: ignore[arg-type]
            cur = o.reshape(cur, E, npx, npx)
            cur = o.cont(o.permute(cur, 2, 0, 1, 3))  # [x, y, n_embd]
            kernel = o.view(cur, [m, m, cur.ne[2]], [0, 0], 0)  # a dummy kernel: unfold is an im2col
            side = (npx - m) // m + 1
            cur = o.new("IM2COL", F32, [cur.ne[2] * m * m, side, side, cur.ne[3]], kernel, cur)
            cur = o.reshape(cur, cur.ne[0], cur.ne[1] * cur.ne[2])
            cur = o.mul_mat(merger, cur)
        cur = self.mm(cur, "mm.1")
        cur = o.unary("UNARY", cur)  # FFN_GELU
        cur = self.mm(cur, "mm.2")
        brk = self.w("v.token_embd.img_break")
        assert brk is not None
        p_x = p_y = npx // m
        n_text = cur.ne[0]
        tmp = o.reshape(cur, n_text, p_x, p_y)
        tok = T(self.g, "NONE", F32, [n_text, 1, p_y])  # a plain tensor of the graph, cleared by a scale
        tok = o.binary("ADD", o.unary("SCALE", tok), brk)
        tmp = o.concat(tmp, tok, 1)
        cur = o.view(tmp, [n_text, p_x * p_y + p_y - 1], [tmp.nb[1]], 0)
        self.g.expand(cur)
        return self.g


_SWAPPED_FFN_TYPES = frozenset({"mlp", "mlp_norm", "ldp", "ldpv2", "qwen2vl_merger", "qwen2.5vl_merger", "exaone4_5",
                                "glm_edge", "gemma3", "idefics3", "minicpmv", "minicpmv4_6"})
"""load_tensors' ``is_ffn_swapped``: for these types a ``ffn_down`` whose rows are ``n_embd`` long is
really the up projection (old conversions)."""


def warmup_image(profile: ProjectorProfile) -> int:
    """``get_dummy_batch``'s square side: ``image_size``, or pixtral's ``set_warmup_n_tokens(256)``
    (16 x 16 merged patches)."""
    if profile.proj_type == "pixtral":
        return 16 * profile.patch_size * (profile.spatial_merge_size or 1)
    return profile.image_size


_DYNAMIC_TOKENS: dict[str, tuple[int, int, str]] = {
    # projector type -> (most image tokens, default merge per side, the key that overrides it):
    # load_hparams' set_limit_image_tokens and its n_merge defaults
    "qwen2vl_merger": (4096, 2, "spatial"), "qwen2.5vl_merger": (4096, 2, "spatial"),
    "qwen3vl_merger": (4096, 2, "spatial"), "glm4v": (4096, 2, "spatial"), "pixtral": (1024, 1, "spatial"),
    "kimivl": (1024, 2, "scale"), "lfm2": (256, 2, "scale"), "gemma4v": (1120, 3, "scale"),
}
"""Types whose images vary in size: the largest image they accept (``image_max_pixels``) is larger
than the warmup's ("avoid OOM on warmup"), and the compute buffer grows to it on the first such image."""


def largest_image(profile: ProjectorProfile) -> int:
    """The side of the largest square image the projector takes: ``image_size`` for fixed-size and
    tiled types, else ``sqrt(image_max_pixels)`` (``set_limit_image_tokens``: most tokens x (patch x
    merge)^2), down to whole merged patches."""
    if profile.proj_type not in _DYNAMIC_TOKENS:
        return profile.image_size
    tokens, merge, key = _DYNAMIC_TOKENS[profile.proj_type]
    if key == "spatial":
        merge = profile.spatial_merge_size or merge
    elif profile.n_merge > 1:  # clip.vision.projector.scale_factor, when the file gives it
        merge = profile.n_merge
    step = profile.patch_size * merge
    pixels = profile.image_max_pixels or tokens * step * step
    return max(step, int(pixels ** 0.5) // step * step)


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
    image, estimated = warmup_image(profile), False
    if profile.has_vision and profile.proj_type not in REPLAYED_TYPES and profile.image_size > 0:
        image, estimated = largest_image(profile), True

    def n_pos(side: int) -> int:
        return (side // profile.patch_size) ** 2 + (1 if profile.proj_type == "mlp" else 0) if profile.patch_size else 0

    flash = _flash(profile, flash_attn, backends[0], n_pos(image))

    def sizes_at(side: int | None) -> tuple[int, int] | None:
        if profile.has_vision and profile.proj_type in REPLAYED_TYPES:
            clip = _Clip(profile, 0, flash, side)
            graph = clip.pixtral() if profile.proj_type == "pixtral" else clip.llava() if profile.proj_type == "mlp" \
                else clip.siglip()
        elif estimated:
            try:
                graph = _Clip(profile, 0, flash, side).vit()
            except ModelReadError:
                return None  # a tower the guide cannot follow: unknown
        else:
            return None
        nodes, node_b, leafs, leaf_b = schedule(graph, list(backends), {}, 1)
        sizes = allocate_graph(nodes, node_b, leafs, leaf_b, list(backends), len(graph.all))
        return sizes[0], (0 if index is None else sizes[-1])

    at_warmup = sizes_at(image)
    growth = host_growth = 0
    largest = image
    if at_warmup is not None and not estimated and profile.proj_type in _DYNAMIC_TOKENS:
        # a larger image than the warmup's grows the buffers on its first encode (the allocator only grows)
        largest = largest_image(profile)
        at_most = sizes_at(largest)
        if at_most is not None:
            growth = max(0, at_most[0] - at_warmup[0])
            host_growth = max(0, at_most[1] - at_warmup[1])
    return ProjectorEstimate(
        proj_type=profile.proj_type, device_index=index, weights_bytes=w_bytes,
        compute_bytes=at_warmup[0] if at_warmup else None, host_compute_bytes=at_warmup[1] if at_warmup else None,
        flash_attn=flash, image_size=image, estimated=estimated and at_warmup is not None,
        growth_bytes=growth, host_growth_bytes=host_growth, largest_image=largest,
    )


def output_embd(profile: ProjectorProfile) -> int | None:
    """``clip_n_mmproj_embd``: the width of the embeddings the projector hands the text model
    (gemma3: ``mm.input_projection.weight`` ne[0]); None where we do not know the type's rule."""
    if profile.proj_type == "gemma3":
        t = profile.tensor("mm.input_projection.weight")
        return t.shape[0] if t is not None else None
    if profile.proj_type in ("idefics3", "mlp"):
        t = profile.tensor("mm.model.fc.weight" if profile.proj_type == "idefics3" else "mm.2.weight")
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
        side = largest_image(profile)
        notes.append(f"projector type {printable(profile.proj_type, limit=40)}: weights exact; compute estimated, "
                     f"not replayed (a plain ViT at the largest image, {side} x {side}; replayed: "
                     + ", ".join(sorted(REPLAYED_TYPES)) + "); a tower that is no plain ViT (fused QKV, Q/K norms) "
                     "has its compute unknown and not counted in the fit check")
    if profile.has_vision and profile.has_audio:
        # clip_init loads a second context for the audio encoder on the same backend, with its own warmup
        notes.append("projector: its audio encoder's weights are counted, its compute buffer is not modelled")
    return notes
