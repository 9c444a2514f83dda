"""What ``-sm tensor`` sends between devices, what that costs on each kind of link, and the speed
of tensor against layer split.

**How many all-reduces.** llama.cpp's Meta backend (ggml/src/ggml-backend-meta.cpp,
``ggml_backend_meta_graph_compute``) cuts the graph after every node whose split state is PARTIAL:
the product of a weight split on axis 0 (its input columns) with an input split the same way.
In a transformer block those are ``attn_output`` and ``ffn_down`` (``ffn_down_exps`` for MoE): two
all-reduces per layer of an ``n_embd x n_tokens`` F32 activation, none after the output matrix
(split by vocab rows, its logits are gathered, not summed). Checked on the real stack: over two RPC
workers every graph evaluation of SmolLM2 (30 layers) makes each worker send 61 tensors, 2 x 30
all-reduce pushes plus the logits (tests/test_tensor_split_real.py). Independent partial
branches that are summed (parallel attention + FFN blocks, MoE expert sums) are merged into one
all-reduce; ``allreduces_per_layer`` is 2 for the sequential block.

**Which algorithm.** ``allreduce_algorithm``:

- CUDA on Linux, built with NCCL (``GGML_CUDA_NCCL`` defaults ON; used when NCCL is found): NCCL's
  ring, F32 for small tensors and BF16 (2 bytes) above 32768 / 131072 / 262144 elements for
  2 / 3 / 4+ GPUs;
- CUDA without NCCL: llama.cpp's internal pipeline for exactly 2 GPUs, else the butterfly fallback;
- everything else (RPC, Vulkan, Metal, CPU): the Meta backend's butterfly: ``ceil(log2 n)`` steps
  in which every device sends its whole tensor to a partner and adds what it receives (a device
  count that is not a power of two first folds the excess in and copies the result back after);
- over RPC each of those copies goes through the client (``ggml_backend_tensor_copy``: a blocking
  ``get_tensor`` from one server, a ``set_tensor`` to the other), one after another.

**Cost.** Each step costs ``latency + bytes / bandwidth`` on the slowest link among the devices.
A ring moves ``2(n-1)/n`` of the data per device in ``2(n-1)`` steps; the butterfly moves the
whole tensor in each of its ``ceil(log2 n)`` steps. Link figures come from the fleet (NVLink,
NVSwitch, PCIe peer-to-peer, host-staged PCIe, network for RPC); ``DEFAULT_LATENCY_US`` fills in
what a fleet does not know; RPC on loopback was calibrated on the real stack (``tensor_compat.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from llamasplit.devices.device import Device
from llamasplit.speed.links import LinkCost

ALLREDUCES_PER_LAYER = 2
"""attn_output and ffn_down each end a Meta subgraph with an all-reduce."""

ACTIVATION_BYTES = 4
"""llama.cpp all-reduces F32 activations (NCCL compresses large ones to BF16 on the wire)."""

NCCL_F32_BELOW = {2: 32768, 3: 131072}
NCCL_F32_BELOW_MANY = 262144
"""ggml-cuda.cu ``ggml_backend_cuda_comm_allreduce_nccl``: element counts under which it reduces in F32."""


class Algorithm(str, Enum):
    NCCL_RING = "nccl-ring"
    CUDA_INTERNAL = "cuda-internal"
    BUTTERFLY = "butterfly"
    BUTTERFLY_HOST = "butterfly-host-staged"
    NONE = "none"


def allreduce_algorithm(devices: Sequence[Device], *, nccl: bool = True) -> tuple[Algorithm, str]:
    """Which all-reduce llama.cpp runs for these devices, and why."""
    n = len(devices)
    if n <= 1:
        return Algorithm.NONE, "one device: nothing to reduce"
    backends = {d.backend.upper() for d in devices}
    if backends == {"CUDA"}:
        if nccl:
            return Algorithm.NCCL_RING, "CUDA on Linux uses NCCL (ring all-reduce) when llama.cpp was built with it"
        if n == 2:
            return Algorithm.CUDA_INTERNAL, "CUDA without NCCL: llama.cpp's internal all-reduce for 2 GPUs"
        return Algorithm.BUTTERFLY, "CUDA without NCCL and not 2 GPUs: the Meta backend's butterfly"
    if "RPC" in backends:
        return Algorithm.BUTTERFLY_HOST, "RPC devices: the Meta backend's butterfly, every copy staged through the client"
    if backends == {"SYCL"} and n == 2:
        return Algorithm.CUDA_INTERNAL, "SYCL has its own all-reduce for 2 devices (F32)"
    return Algorithm.BUTTERFLY, f"{'/'.join(sorted(backends))}: no backend all-reduce, the Meta backend's butterfly"


def butterfly_steps(n: int) -> int:
    """``ceil(log2 n)``: llama.cpp's ``n_reduce_steps`` (fold-in and copy-back included)."""
    return math.ceil(math.log2(n)) if n > 1 else 0


def host_staged_transfers(n: int) -> int:
    """Copies one butterfly all-reduce makes over RPC: fold-in, ``p log2 p`` exchanges, copy-back
    (``p`` = the largest power of two <= n).

    >>> [host_staged_transfers(n) for n in (1, 2, 3, 4, 5, 8)]
    [0, 2, 4, 8, 10, 24]
    """
    if n <= 1:
        return 0
    p = 1 << (n.bit_length() - 1)
    return 2 * (n - p) + p * int(math.log2(p))


def ring_factor(n: int) -> float:
    """Share of the data each device sends (and receives) in a ring all-reduce: ``2(n-1)/n``."""
    return 2 * (n - 1) / n if n > 1 else 0.0



def allreduce_seconds(n_elements: int, n: int, algorithm: Algorithm, link: LinkCost | None) -> float:
    """Time of one all-reduce of ``n_elements`` F32 values over ``n`` devices."""
    if n <= 1 or link is None or algorithm is Algorithm.NONE:
        return 0.0
    n_bytes = n_elements * ACTIVATION_BYTES
    if algorithm is Algorithm.NCCL_RING:
        if n_elements >= NCCL_F32_BELOW.get(n, NCCL_F32_BELOW_MANY):
            n_bytes = n_elements * 2  # reduced as BF16
        steps = 2 * (n - 1)
        return steps * link.latency_s + ring_factor(n) * n_bytes / link.bandwidth_bytes_s
    if algorithm is Algorithm.CUDA_INTERNAL:
        return link.seconds(n_bytes)
    if algorithm is Algorithm.BUTTERFLY:
        p = 1 << (n.bit_length() - 1)
        steps = butterfly_steps(n) + (1 if p != n else 0)  # the fold-in before, the copy back after
        return steps * link.seconds(n_bytes)
    # host-staged: each copy is a get to the client and a set from it, one after another
    return host_staged_transfers(n) * link.seconds(n_bytes)


# ---------------------------------------------------------------------------------------------
# traffic: the arithmetic the design document does


@dataclass(frozen=True)
class Traffic:
    """All-reduce traffic of tensor parallelism for one forward pass over ``tokens`` tokens."""

    n_embd: int
    n_layer: int
    tp: int
    tokens: int
    dtype_bytes: int
    allreduces_per_layer: int = ALLREDUCES_PER_LAYER

    @property
    def activation_bytes(self) -> int:
        """One all-reduced activation: ``tokens x n_embd x dtype_bytes``."""
        return self.tokens * self.n_embd * self.dtype_bytes

    @property
    def layer_bytes(self) -> int:
        """The activations all-reduced in one layer (attention output + FFN output)."""
        return self.allreduces_per_layer * self.activation_bytes

    @property
    def model_bytes(self) -> int:
        return self.n_layer * self.layer_bytes

    def wire_bytes_per_device(self, factor: float) -> float:
        """Bytes each device sends per layer at a given ring factor."""
        return factor * self.layer_bytes

    @property
    def ring_factor(self) -> float:
        return ring_factor(self.tp)

    @property
    def butterfly_bytes_per_layer(self) -> int:
        """llama.cpp's butterfly fallback: the whole activation in each of ceil(log2 n) steps."""
        p = 1 << (self.tp.bit_length() - 1)
        steps = butterfly_steps(self.tp) + (1 if p != self.tp else 0)
        return steps * self.layer_bytes
