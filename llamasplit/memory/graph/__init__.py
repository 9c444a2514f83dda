"""llama.cpp's compute buffers, by replaying how llama.cpp sizes them.

llama.cpp has no formula for its compute buffers: ``llama_context::sched_reserve`` builds the
worst-case graph (a ubatch of ``min(n_ctx, n_ubatch)`` tokens against a full KV cache), the
backend scheduler (``ggml/src/ggml-backend.cpp``, ``ggml_backend_sched_split_graph``) assigns
every node to a device and adds copies of the tensors that cross devices, and the graph
allocator (``ggml/src/ggml-alloc.c``, ``ggml_gallocr_reserve_n``) places every intermediate
tensor in one buffer per device, reusing memory as soon as a tensor's last consumer has run.
Each device's compute buffer is that allocator's high-water mark.

This package does the same three steps, in Python, from the model header alone, laid out like
llama.cpp's ``src/models/``: a small ggml (``ggml.py``), the shared blocks (``base.py``: inputs,
norms, output; ``attention.py``; ``ffn.py``: dense FFN and MoE), the generic decoder
(``transformer.py``), one small module per arch family registered in ``registry.py`` (each a
``Family`` record of ``family.py``: its build function and quirks), the scheduler
(``scheduler.py``), the allocator (``allocator.py``), the guide for the rest (``heuristic.py``)
and the entry point (``replay.py``).

1. **Graph** (``builder.Builder``): the nodes of the arch's graph in ggml's order (depth-first from
   each ``ggml_build_forward_expand``), each with its shape, type and strides, following
   ``src/llama-graph.cpp`` (inputs, norms, Q/K/V, RoPE, the KV-cache stores and views, flash or
   plain attention, Hadamard rotations of a quantised cache, dense FFN, MoE routing, expert
   groups and experts, logits) and ``src/models/{llama,gemma3,qwen3moe,deepseek2}.cpp``. Other
   decoder-only archs use the same builder with the features their tensors show (Q/K norms,
   post norms, biases, fused QKV, shared experts) plus the quirks of those checked against
   llama.cpp (tests/golden/fit_params.json, ``benchmarks/accuracy.py --families``): glm4moe
   (post_attention_norm before the FFN, sigmoid gating, NextN blocks not built), gpt-oss
   (expert biases, softmax over the chosen experts, output rows picked after the last layer),
   phi3 (fused SwiGLU, pre-scaled Q), granite (residual and logit scales), olmo2 (no pre-norms),
   cohere2 (its own parallel block). Recurrent and hybrid archs build their own graphs on the
   recurrent blocks of ``ssm.py`` (``build_rs``, the Mamba-1 and Mamba-2 mixers, LFM2's short
   convolution, ``n_rs_seq`` rollback slots): mamba, mamba2, jamba, falcon-h1, lfm2(moe),
   granitehybrid, nemotron_h(_moe); qwen3next has its own delta-net block. Archs it cannot follow
   (rwkv*, plamo2, encoders, ``registry.NOT_REPLAYED``, layers whose tensors no family's check
   accepts) get ``heuristic_bytes``, and the plan says "compute estimated, not replayed".
2. **Scheduler** (``scheduler.schedule``): passes 1-5 of ``ggml_backend_sched_split_graph`` (weights pull
   their ops to their device, GPUs expand up and down, inputs start on the CPU, a copy of every
   tensor a split reads from another device, four copies (``GGML_SCHED_MAX_COPIES``) of every
   input under pipeline parallelism), then the graph copy with those inputs in front.
3. **Allocator** (``allocator.allocate_graph``): ``ggml_gallocr_alloc_graph_impl`` and ``ggml_dyn_tallocr``
   (best fit among free blocks, the tail grows the buffer, in-place reuse of a parent with one
   consumer, outputs never freed, frees merged with neighbours), each backend's alignment.

What ends up in the buffers (the replay shows it; the allocator decides what overlaps):

- the host: the graph inputs, allocated first (token ids, positions, KV row indices, a KQ mask
  of ``n_kv x n_tokens`` per cache, f16 under flash attention else f32, the unused
  ``inp_embd`` of ``n_embd x n_tokens`` f32, ``out_ids``, Hadamard matrices), four times over
  under pipeline parallelism; plus the activations of any layer or expert run on the CPU;
- every device: copies of what its splits read from elsewhere (masks, positions, the residual
  stream from the previous device, weights left on the CPU by ``-ot`` whose op runs there);
  then the peak of its layers' live intermediates: Q/K/V and, without flash attention, the
  f32 KQ scores ``n_kv x n_tokens x n_head``; the FFN's gate/up/GLU ``n_ff x n_tokens`` f32;
  MoE router probabilities, expert activations ``n_ff_exp x n_used x n_tokens`` f32 and the
  weighted experts; MLA's absorbed queries and decompressed values;
- the output device: the final norm (a graph output, never freed) and the logits
  ``n_vocab x n_outputs`` f32.

Two llama.cpp behaviours matter for the numbers and are reproduced:

- the graph callback pins each layer's ``norm`` nodes to the layer's device (with every layer
  offloaded, or fewer than 32 tokens) and, under ``-nkvo``, attention to the CPU.
  ``llama-fit-params`` measures through ``ggml_backend_sched_reserve_size``, which resets the
  scheduler after the graph is built and so loses those pins (a device boundary then copies
  two tensors instead of one). ``settings.binary == "llama-fit-params"`` gives its figures; the
  binaries that allocate keep the pins.
- only the prompt-processing graph is sized: the token-generation graph llama.cpp also
  reserves is smaller on every device.

Accuracy (``tests/test_estimate_vs_llamacpp.py``, ``benchmarks/accuracy.py``): the same bytes as
llama.cpp on every device and the host of every configuration tried, on CPU and RPC devices:
1341/1341 device figures floor to fit-params' MiB and 1314/1314 print the same 0.01 MiB as
``llama-completion``'s allocations (SmolLM2, Gemma-3, synthetic llama, qwen3moe and deepseek2 MLA;
partial offload, ``-ot``/``--cpu-moe``/``--n-cpu-moe``, contexts 512-32k, f16/q8_0/q4_0 caches,
flash attention on and off, ubatches 32-1024, ``-np``, ``-nkvo``).

CUDA specifics (alignment 128, the host compute buffer in pinned memory, ops with host weights
offloaded to the GPU for batches of 32 or more with the weight copied into the GPU's compute
buffer, the padding of quantised tensors, flash attention's f16 copies of a quantised cache)
follow ``ggml-cuda.cu`` but could not be checked against a GPU here; the extra allocation
dependencies CUDA's fusion adds (``ggml_backend_cuda_graph_optimize``) are not modelled.
"""

from llamasplit.memory.graph.heuristic import heuristic_bytes
from llamasplit.memory.graph.replay import compute_bytes, replayable, weight_backends

__all__ = ["compute_bytes", "heuristic_bytes", "replayable", "weight_backends"]
