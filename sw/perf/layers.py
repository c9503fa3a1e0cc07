"""SAM 2's layers as shapes: what the placement and the profile need of each node, no weights.

`Layer` is one node of the int8 graph reduced to its op, stage and shapes (channels-last, as the
graph keeps them). `graph_layers` reads the int8 image graph (golden_model.quant); `video_layers`
derives the video stages (memory encoder, memory attention with a full bank) from the model's
config until the int8 graph carries them: the one function to swap for the graph's video nodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

#: the profile's stages, in the order a video frame runs them
STAGES = ("image_encoder", "prompt_encoder", "mask_decoder", "memory_attention", "memory_encoder")
IMAGE_STAGES = ("image_encoder",)
DECODER_STAGES = ("prompt_encoder", "mask_decoder")


@dataclass(frozen=True)
class Layer:
    """One node by shape. in_shapes: the activations it reads; w_shape: its weight (None: none);
    out_shape; attrs: the graph node's (k, stride, padding, heads, relu, ...); out_bytes: bytes per
    output element (int8 1, int32 / float32 4); inputs, output: the tensors' names where the graph gives
    them (fusion needs who reads what: sw.compile.graph.fuse_store_tables); host: the builder's float node
    (attrs["host"]: the decoder's token stream), which stays on the host whatever the preset."""
    name: str
    op: str
    stage: str
    in_shapes: tuple
    out_shape: tuple
    w_shape: tuple | None = None
    attrs: dict = field(default_factory=dict)
    in_bytes_per: tuple = ()
    out_bytes: int = 1
    inputs: tuple = ()
    output: str = ""
    host: bool = False

    @property
    def elements(self) -> int:
        return math.prod(self.out_shape)

    def bytes_in(self) -> int:
        per = self.in_bytes_per or (1,) * len(self.in_shapes)
        return sum(math.prod(s) * b for s, b in zip(self.in_shapes, per))

    def bytes_out(self) -> int:
        return self.elements * self.out_bytes

    @property
    def macs(self) -> int:
        """Multiply-accumulates (the graph's count: golden_model.quant.graph.Graph.macs)."""
        o, w = self.out_shape, self.w_shape
        if self.op == "linear":
            return math.prod(o) * self.in_shapes[0][-1]
        if self.op in ("conv", "depthwise"):
            return math.prod(o) * math.prod(w[1:])
        if self.op == "conv_transpose":
            return math.prod(self.in_shapes[0]) * math.prod(w[1:])
        if self.op == "attention":
            q, k = self.in_shapes[0], self.in_shapes[1]
            return 2 * q[0] * math.prod(q[1:-1]) * math.prod(k[1:-1]) * q[-1]
        if self.op == "mask_product":
            return math.prod(o) * self.in_shapes[0][-1]
        if self.op == "mlp":
            return self.attrs.get("macs", 0)
        return 0


def graph_layers(graph) -> list[Layer]:
    """Every node of an int8 graph (golden_model.quant.graph.Graph) as a Layer, in order."""
    d = graph.dims

    def shape(name):
        s = graph.tensors[name].shape if name in graph.tensors else graph.constants[name].shape
        return tuple(d.get(x, x) if isinstance(x, str) else int(x) for x in s)

    def nbytes(name):
        return 1 if graph.tensors[name].dtype == "int8" else 4

    out = []
    for n in graph.nodes:
        acts = [t for t in n.inputs if t in graph.tensors]
        consts = [t for t in n.inputs if t in graph.constants]
        w = shape(consts[0]) if consts and n.op in ("linear", "conv", "depthwise", "conv_transpose") else None
        attrs = dict(n.attrs)
        if n.op == "mlp":
            attrs["macs"] = graph.macs(n)
        out.append(Layer(n.name, n.op, n.stage, tuple(shape(t) for t in acts), shape(n.outputs[0]), w, attrs,
                         tuple(nbytes(t) for t in acts), nbytes(n.outputs[0]), tuple(acts), n.outputs[0],
                         bool(n.attrs.get("host"))))
    return out


def image_layers(model: str, image_size: int | None = None) -> list[Layer]:
    """The int8 image graph of `model` for a click frame (seeded random weights: only the shapes are read):
    without the mask prompt's branch (nodes with attrs branch), which runs only when a mask is fed."""
    from golden_model.quant.builder import build_graph, random_model
    return [x for x in graph_layers(build_graph(random_model(model, image_size))) if not x.attrs.get("branch")]


def video_layers(model: str, image_size: int | None = None) -> list[Layer]:
    """The video stages of one steady-state frame, from the model's config (golden_model.video's
    TrackerConfig): the memory attention against a full bank (num_maskmem frames of memory features
    and max_obj_ptrs_in_encoder object pointers, each split into hidden_dim / mem_dim tokens), then the
    memory encoder of the frame's mask. Keys and values of a memory frame are projected (and RoPE'd)
    once, when it enters the bank: here, once per frame (the `bank.*` layers); the temporal slots'
    keys once per session (not here); per frame, each cross-attention projects the object-pointer
    tokens and sums the memory's keys with their slots' (k_sum: golden_model.quant.video), then reads
    the bank. The one place these shapes are made up: when the int8 graph
    carries the video nodes, this becomes graph_layers over them."""
    from golden_model.config import load_config
    from golden_model.video import TrackerConfig
    cfg = load_config(model)
    tc = TrackerConfig.from_config(cfg)
    s = image_size or tc.image_size
    h = s // tc.backbone_stride
    hw, d, md = h * h, tc.hidden_dim, tc.mem_dim
    me, ma = tc.memory_encoder, tc.memory_attention
    ptr_per_frame = d // md if tc.use_obj_ptrs_in_encoder else 0     # one pointer per frame, in mem_dim tokens
    ptr_tokens = tc.max_obj_ptrs_in_encoder * ptr_per_frame
    keys = tc.num_maskmem * hw + ptr_tokens
    L: list[Layer] = []

    def add(name, op, stage, ins, out, w=None, in_bytes_per=(), **attrs):
        L.append(Layer(name, op, stage, tuple(tuple(i) for i in ins), tuple(out), w, attrs, in_bytes_per))

    def linear(name, stage, rows, k, n, relu=False, **attrs):
        add(name, "linear", stage, [(1, rows, k)], (1, rows, n), (n, k), relu=relu, **attrs)

    # ---- memory attention (ma.num_layers layers, 1 head, RoPE on queries and memory keys)
    st = "memory_attention"
    dm, ff = ma.d_model, ma.dim_feedforward
    add("mem_attn.pos_in", "add", st, [(1, hw, dm), (1, hw, dm)], (1, hw, dm), frame_only=True)
    for i in range(ma.num_layers):
        p = f"mem_attn.layers.{i}"
        # layer 0 up to its cross-attention's queries reads only the frame: the same for every object
        same = dict(frame_only=True) if i == 0 else {}
        add(f"{p}.norm1", "layernorm", st, [(1, hw, dm)], (1, hw, dm), **same)
        for t in ("q", "k", "v"):
            linear(f"{p}.self_attn.{t}", st, hw, dm, dm, **same)
        for t in ("q", "k"):
            add(f"{p}.self_attn.rope_{t}", "rope", st, [(1, hw, dm)], (1, hw, dm), **same)
        add(f"{p}.self_attn.sdpa", "attention", st, [(1, hw, dm)] * 3, (1, hw, dm), heads=ma.num_heads, **same)
        linear(f"{p}.self_attn.out", st, hw, dm, dm, **same)
        add(f"{p}.self_res", "add", st, [(1, hw, dm)] * 2, (1, hw, dm), **same)
        add(f"{p}.norm2", "layernorm", st, [(1, hw, dm)], (1, hw, dm), **same)
        linear(f"{p}.cross_attn.q", st, hw, dm, dm, **same)
        add(f"{p}.cross_attn.rope_q", "rope", st, [(1, hw, dm)], (1, hw, dm), **same)
        # the frame entering the bank: its keys and values for this layer, projected once
        linear(f"bank.{i}.k", st, hw, md, dm)
        linear(f"bank.{i}.v", st, hw, md, dm)
        add(f"bank.{i}.rope_k", "rope", st, [(1, hw, dm)], (1, hw, dm))
        if ptr_tokens:      # the pointers' keys (memory and temporal parts) and values, per frame; no RoPE
            for t in ("k", "kpos", "v"):
                linear(f"{p}.cross_attn.{t}_ptr", st, ptr_tokens, md, dm)
            for t in ("k", "kpos"):
                add(f"{p}.cross_attn.{t}_ptr_rescale", "rescale", st, [(1, ptr_tokens, dm)], (1, ptr_tokens, dm))
        add(f"{p}.cross_attn.k_sum", "add", st, [(1, keys, dm)] * 2, (1, keys, dm))
        add(f"{p}.cross_attn.sdpa", "attention", st, [(1, hw, dm), (1, keys, dm), (1, keys, dm)], (1, hw, dm),
            heads=ma.num_heads)
        linear(f"{p}.cross_attn.out", st, hw, dm, dm)
        add(f"{p}.cross_res", "add", st, [(1, hw, dm)] * 2, (1, hw, dm))
        add(f"{p}.norm3", "layernorm", st, [(1, hw, dm)], (1, hw, dm))
        linear(f"{p}.mlp.fc1", st, hw, dm, ff, relu=ma.activation == "relu")
        linear(f"{p}.mlp.fc2", st, hw, ff, dm)
        add(f"{p}.mlp_res", "add", st, [(1, hw, dm)] * 2, (1, hw, dm))
    add("mem_attn.norm", "layernorm", st, [(1, hw, dm)], (1, hw, dm))

    # ---- memory encoder: mask downsampler (conv s2 + LayerNorm2d + GELU per stage), pix_feat
    # projection, fuser CXBlocks (depthwise 7x7, LayerNorm, MLP 4x), out projection to mem_dim
    st = "memory_encoder"
    add("mem_enc.mask_q", "quantize", st, [(1, s, s, 1)], (1, s, s, 1), in_bytes_per=(4,))   # the decoder's logits
    cin, side = 1, s
    n_ds = round(math.log(me.ds_total_stride, me.ds_stride))
    for i in range(n_ds):
        cout, side_o = cin * me.ds_stride ** 2, side // me.ds_stride
        add(f"mem_enc.ds.{i}.conv", "conv", st, [(1, side, side, cin)], (1, side_o, side_o, cout),
            (cout, cin, me.ds_kernel_size, me.ds_kernel_size), k=me.ds_kernel_size, stride=me.ds_stride,
            padding=me.ds_padding)
        add(f"mem_enc.ds.{i}.norm", "layernorm", st, [(1, side_o, side_o, cout)], (1, side_o, side_o, cout))
        add(f"mem_enc.ds.{i}.gelu", "gelu", st, [(1, side_o, side_o, cout)], (1, side_o, side_o, cout))
        cin, side = cout, side_o
    linear("mem_enc.ds.proj", st, hw, cin, me.in_dim)
    linear("mem_enc.pix_feat_proj", st, hw, me.in_dim, me.in_dim)
    add("mem_enc.fuse_add", "add", st, [(1, h, h, me.in_dim)] * 2, (1, h, h, me.in_dim))
    c, k = me.in_dim, me.fuser_kernel_size
    for i in range(me.fuser_layers):
        p = f"mem_enc.fuser.{i}"
        add(f"{p}.dwconv", "depthwise", st, [(1, h, h, c)], (1, h, h, c), (c, 1, k, k), k=k, stride=1,
            padding=me.fuser_padding)
        add(f"{p}.norm", "layernorm", st, [(1, h, h, c)], (1, h, h, c))
        linear(f"{p}.pwconv1", st, hw, c, 4 * c)
        add(f"{p}.gelu", "gelu", st, [(1, hw, 4 * c)], (1, hw, 4 * c))
        linear(f"{p}.pwconv2", st, hw, 4 * c, c)
        add(f"{p}.res", "add", st, [(1, h, h, c)] * 2, (1, h, h, c))
    if me.out_dim != me.in_dim:
        linear("mem_enc.out_proj", st, hw, me.in_dim, me.out_dim)
    return L


def batch_objects(layers, objects: int) -> list[Layer]:
    """The memory attention of `objects` objects batched as the overlay runs it
    (sw.runtime.video_exec.VideoGraphExecutor.run_objects): the nodes that read only the frame (attrs
    frame_only) once, every other one once over all objects' rows (attention: the objects on its batch,
    one call: in the steady state every object's bank is full, so their memories are equally long).
    Other stages' layers are returned as they are."""
    from dataclasses import replace
    if objects == 1:
        return list(layers)
    return [x if x.stage != "memory_attention" or x.attrs.get("frame_only") else
            replace(x, in_shapes=tuple((s[0] * objects,) + tuple(s[1:]) for s in x.in_shapes),
                    out_shape=(x.out_shape[0] * objects,) + tuple(x.out_shape[1:]))
            for x in layers]
