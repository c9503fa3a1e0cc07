"""The video half of int8 SAM 2: memory encoder, memory attention and the int8 memory bank.

    graph = build_full_graph(model)                      # image graph + video nodes (one Graph)
    stats = calibrate(graph, photos); calibrate_video(graph, photos, stats)
    qm = quantize_video(graph, stats, key_tile=32)       # -> QuantModel with the video parameters
    predictor = graph_video_predictor(qm.graph, VideoIntRunner(qm))   # a golden_model.video.VideoPredictor

Nodes (official numerics, sam2/modeling/memory_encoder.py, memory_attention.py, sam/transformer.py
RoPEAttention; not golden_model.memory_attention's speed rewrites: values are projected to 256
channels before attention, RoPE is applied to projected int8 q / k):
  memory_encoder    host mask preparation (sigmoid or binarise, x20 - 10) -> int8; mask downsampler
                    (4 x conv 3x3/s2 + LayerNorm2d + GELU, 1x1 projection); pix_feat_proj; sum;
                    2 fuser CXBlocks (depthwise 7x7, LayerNorm2d, pwconv1, GELU, pwconv2 with the
                    layer scale gamma folded into its rows, residual); out_proj to 64 channels;
                    + the no-object embedding (host feeds absent * no_obj_embed_spatial) = the bank's
                    frame `mem.features`.
  memory_attention  the bank gathered by the host / DMA into `ma.memory` (frames, then object-pointer
                    tokens, one scale) and `ma.memory_pos` (each frame's sine encoding + its temporal
                    slot embedding, precomputed int8 per slot; the pointers' projected temporal
                    encodings); x = curr + 0.1 pos; 4 layers of pre-norm RoPE self-attention,
                    RoPE cross-attention, ReLU FFN; final LayerNorm; a rescale to the mask decoder's
                    input scale (`image_embed`'s: the decoder reads it in place of the image
                    embedding). The cross-attention keys, k_proj(memory + pos) RoPE'd in the
                    official, are split by linearity (Wk (m + p) + b = (Wk m + b) + Wk p, and RoPE
                    is linear): `k` = k_proj(memory) -> `k_rope`, `kpos` = Wk memory_pos (no bias)
                    -> `kpos_rope`, `k_sum` = their int8 add (intvec.add). RoPE on the frames'
                    tokens with the q table repeated per frame (rope_k_repeat); the last O pointer
                    tokens excluded and only rescaled. The memory part of a frame's keys and the
                    pos part of a temporal slot's (a constant: sine + maskmem_tpos_enc[slot]) are
                    then fixed, so the overlay projects each once (sw/runtime/video_exec.py) and
                    a tracked frame's key work is k_sum (and the pointers' few tokens).
  host              the object pointer MLP (obj_ptr_proj, M = 1) on the chosen SAM token, the
                    no-object pointer mix, the pointers' temporal encodings (sine + a 256 x 64 linear
                    per pointer), quantising pointers into the bank.
Mask prompts and corrections: a correction (clicks on a tracked frame) feeds the frame's previous
logits to the image graph's mask branch (builder.MASK_INPUT); a mask prompt is taken as the output
(official _use_mask_as_output) and only its object pointer comes from the SAM heads: the host
downsamples the mask (mask_downsample, conv 4x4/s4, 16 MAC a low-res pixel) into the mask branch,
and `vid.mask_pix` rescales the frame's raw features to the decoder's input scale.
The memory bank holds int8 frames (`mem.features`' scale), int8 pointers (the same scale, so a
frame-and-pointer gather is pure addressing) and the int8 slot encodings (`ma.memory_pos`' scale).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from golden_model import intvec, nn
from golden_model.intops import quantize_multiplier
from golden_model.memory_attention import apply_rope, axial_rope
from golden_model.memory_encoder import mask_for_memory
from golden_model.quant.builder import MASK_INPUT, _Builder, build_graph, missing_mask_path, require_mask_path
from golden_model.quant.graph import Graph
from golden_model.quant.interpret import FLOAT_OPS, FloatRunner
from golden_model.quant.intinterp import INT_OPS, IntRunner
from golden_model.quant.quantize import (SCALE_PASSES, TensorStats, mask_branch_only, quantize, quantize_tensor,
                                         stats_key)
from golden_model.transforms import resize_antialias, resize_bilinear
from golden_model.video import NO_OBJ_SCORE, Tracker, TrackerConfig, VideoPredictor, get_1d_sine_pe, to_bfloat16

F32 = np.float32
EPS_LAYERNORM2D = 1e-6          # sam2_utils.LayerNorm2d (mask downsampler, CXBlock)
EPS_MEMATTN = 1e-5              # nn.LayerNorm default (memory attention)
SLOTS = "ma.maskmem_pos#slots"  # (num_maskmem, HW, mem_dim): sine encoding + maskmem_tpos_enc[slot]
ROPE_COS, ROPE_SIN = "ma.rope_cos", "ma.rope_sin"
VIDEO_FRAMES_PER_PHOTO = 4      # calibration: frames per track of shifted copies of one photo
#: the tensors the video path cannot run without (named when a quantised file lacks them)
VIDEO_TENSORS = ("mem.mask", "mem.features", "ma.memory", "ma.memory_pos", "ma.norm", "ma.to_decoder",
                 "vid.obj_ptr")
MASK_PIX = "vid.mask_pix"       # a mask prompt's frame features at the decoder's input scale
MASK_DOWNSAMPLE = ("mask_downsample.weight", "mask_downsample.bias")


class VideoGraphError(ValueError):
    """A graph (or quantised file) without the video part."""


# ---------------------------------------------------------------- building
def build_full_graph(model) -> Graph:
    """The image graph of golden_model.quant.builder plus the video nodes of `model` (a SAM2Model)."""
    g = build_graph(model)
    add_video(g, model)
    return g


def add_video(g: Graph, model) -> None:
    """Append the memory encoder, memory attention and pointer nodes to the image graph `g`."""
    tr = model.tracker
    cfg = tr.cfg
    if not (model.directly_add_no_mem_embed and cfg.use_obj_ptrs_in_encoder and cfg.add_tpos_enc_to_obj_ptrs
            and cfg.proj_tpos_enc_in_obj_ptrs and cfg.pred_obj_scores and cfg.fixed_no_obj_ptr
            and not cfg.soft_no_obj_ptr and cfg.no_obj_embed_spatial and cfg.memory_attention.num_heads == 1
            and model.obj_ptr_proj is not None and hasattr(model.obj_ptr_proj, "layers")):
        raise ValueError("the int8 video graph is built for the sam2.1 tracking options")
    b = _Builder(g)
    emb = g.meta["image_outputs"][0]
    curr = g.node(emb).inputs[0]            # the stride-16 level before no_mem_embed: vision_feat
    n0 = len(g.nodes)
    _memory_encoder(b, model, curr)
    n1 = len(g.nodes)
    ptr = _obj_ptr(b, model)
    n2 = len(g.nodes)
    _memory_attention(b, model, curr)
    side = g.tensors[curr].shape[1]
    pe = tr.memory_encoder.position_encoding(side, side).reshape(cfg.mem_dim, -1).T       # (HW, mem_dim)
    g.const(SLOTS, pe[None] + tr.maskmem_tpos_enc[:, None, :])
    g.const("obj_ptr_tpos_proj.weight", tr.obj_ptr_tpos_proj[0])
    g.const("obj_ptr_tpos_proj.bias", tr.obj_ptr_tpos_proj[1])
    g.const("no_obj_ptr", model.no_obj_ptr)
    g.const("no_obj_embed_spatial", tr.no_obj_embed_spatial)
    g.const(MASK_DOWNSAMPLE[0], tr.mask_downsample[0])
    g.const(MASK_DOWNSAMPLE[1], tr.mask_downsample[1])
    n3 = len(g.nodes)
    b.op(MASK_PIX, "rescale", [curr], b.shape(curr), "memory_encoder")
    g.dims.update(K=cfg.num_maskmem * side * side + 4 * cfg.max_obj_ptrs_in_encoder,
                  O=4 * cfg.max_obj_ptrs_in_encoder)
    g.meta["video"] = {"curr": curr, "image_embed": emb, "obj_ptr": ptr,
                       "memory_encoder": [n.name for n in g.nodes[n0:n1]],
                       "obj_ptr_nodes": [n.name for n in g.nodes[n1:n2]],
                       "memory_attention": [n.name for n in g.nodes[n2:n3]], "mask_pix": MASK_PIX}


def _memory_encoder(b: _Builder, model, curr: str) -> None:
    g, st = b.g, "memory_encoder"
    enc, s = model.tracker.memory_encoder, model.image_size
    mcfg = enc.cfg
    mask_f = b.t("mem.mask_f", (1, s, s, 1), "float32")
    m = b.op("mem.mask", "quantize", [mask_f], (1, s, s, 1), st)
    ds, pre = enc.mask_downsampler, "memory_encoder.mask_downsampler.encoder"
    k, stride, pad = mcfg.ds_kernel_size, ds.stride, ds.padding
    side = s
    for i, (cw, cb, nw, nb) in enumerate(ds.stages):
        side = (side + 2 * pad - k) // stride + 1
        w, bias = g.const(f"{pre}.{3 * i}.weight", cw), g.const(f"{pre}.{3 * i}.bias", cb)
        m = b.op(f"mem.ds.conv{i}", "conv", [m, w, bias], (1, side, side, cw.shape[0]), st,
                 k=k, stride=stride, padding=pad)
        m = b.layernorm(f"mem.ds.norm{i}", m, f"{pre}.{3 * i + 1}", nw, nb, EPS_LAYERNORM2D, st)
        m = b.unary(f"mem.ds.gelu{i}", "gelu", m, st)
    last = 3 * len(ds.stages)
    m = b.linear("mem.ds.proj", m, f"{pre}.{last}.weight", ds.proj_w, f"{pre}.{last}.bias", ds.proj_b, st)
    x = b.linear("mem.pix_proj", curr, "memory_encoder.pix_feat_proj.weight", enc.pix_w,
                 "memory_encoder.pix_feat_proj.bias", enc.pix_b, st)
    x = b.add("mem.fuse_in", x, m, st)
    for i, blk in enumerate(enc.fuser):
        p, n = f"memory_encoder.fuser.layers.{i}", f"mem.fuser{i}"
        y = b.op(f"{n}.dw", "depthwise", [x, g.const(f"{p}.dwconv.weight", blk.dw_w), g.const(f"{p}.dwconv.bias",
                                                                                           blk.dw_b)],
                 b.shape(x), st, k=blk.dw_w.shape[-1], stride=1, padding=blk.padding)
        y = b.layernorm(f"{n}.norm", y, f"{p}.norm", blk.norm_w, blk.norm_b, EPS_LAYERNORM2D, st)
        y = b.linear(f"{n}.fc1", y, f"{p}.pwconv1.weight", blk.fc1_w, f"{p}.pwconv1.bias", blk.fc1_b, st)
        y = b.unary(f"{n}.gelu", "gelu", y, st)
        # the layer scale gamma (per output channel) folds into pwconv2's rows and bias
        y = b.linear(f"{n}.fc2", y, f"{p}.pwconv2.weight#gamma", blk.fc2_w * blk.gamma[:, None],
                     f"{p}.pwconv2.bias#gamma", blk.fc2_b * blk.gamma, st)
        x = b.add(f"{n}.res", x, y, st)
    x = b.linear("mem.out_proj", x, "memory_encoder.out_proj.weight", enc.out_w,
                 "memory_encoder.out_proj.bias", enc.out_b, st)
    md = mcfg.out_dim
    no_f = b.t("mem.no_obj_f", (1, 1, 1, md), "float32")
    no = b.op("mem.no_obj", "quantize", [no_f], (1, 1, 1, md), st)
    b.add("mem.features", x, no, st)


def _obj_ptr(b: _Builder, model) -> str:
    """Host: obj_ptr_proj (sam2_utils.MLP, ReLU between layers) on the chosen SAM output token."""
    c = model.hidden_dim
    tok = b.t("vid.sam_token", (1, 1, c), "float32")
    ins = [tok]
    for i, lin in enumerate(model.obj_ptr_proj.layers):
        ins += [b.g.const(f"obj_ptr_proj.layers.{i}.weight", lin.weight),
                b.g.const(f"obj_ptr_proj.layers.{i}.bias", lin.bias)]
    return b.op("vid.obj_ptr", "mlp", ins, (1, c), "memory_encoder", "float32", row=0, sigmoid=False)


def _memory_attention(b: _Builder, model, curr: str) -> None:
    g, st = b.g, "memory_attention"
    ma, cfg = model.tracker.memory_attention, model.tracker.cfg
    acfg = ma.cfg
    _, side, _, d = g.tensors[curr].shape
    md = acfg.kv_in_dim
    mem = b.op("ma.memory", "memory_bank", [], (1, "K", md), st, part="memory")
    mpos = b.op("ma.memory_pos", "memory_bank", [], (1, "K", md), st, part="memory_pos")
    if acfg.pos_enc_at_attn or acfg.pos_enc_at_cross_attn_queries or not acfg.pos_enc_at_input:
        raise ValueError("the int8 video graph is built for the sam2.1 memory attention (pos at input and keys)")
    pe = model.image_encoder.neck.position_encoding(side, side).transpose(1, 2, 0)[None]   # (1, H, W, C)
    x = b.add("ma.x0", curr, g.const("ma.curr_pos#0.1", F32(0.1) * pe), st)
    cos, sin = axial_rope(d, side, side, acfg.rope_theta)
    cos, sin = g.const(ROPE_COS, cos), g.const(ROPE_SIN, sin)

    def attention(n, p, mod, q_in, k_in, v_in, exclude, k_pos=None):
        q = b.linear(f"{n}.q", q_in, f"{p}.q_proj.weight", mod.q_w, f"{p}.q_proj.bias", mod.q_b, st)
        k = b.linear(f"{n}.k", k_in, f"{p}.k_proj.weight", mod.k_w, f"{p}.k_proj.bias", mod.k_b, st)
        v = b.linear(f"{n}.v", v_in, f"{p}.v_proj.weight", mod.v_w, f"{p}.v_proj.bias", mod.v_b, st)
        q = b.op(f"{n}.q_rope", "rope", [q, cos, sin], b.shape(q), st, exclude=0)
        k = b.op(f"{n}.k_rope", "rope", [k, cos, sin], b.shape(k), st, exclude=exclude)
        if k_pos is not None:
            # Wk (mem + pos) + b = (Wk mem + b) + Wk pos, and RoPE is linear: each part projected and RoPE'd
            # on its own (the memory's once per frame, the slot's once per session), summed per frame
            kp = b.host_or_int(f"{n}.kpos", "linear", [k_pos, f"{p}.k_proj.weight",
                                                       g.const(f"{p}.k_proj.bias#pos", np.zeros_like(mod.k_b))],
                               b.shape(k), st, relu=False)
            kp = b.op(f"{n}.kpos_rope", "rope", [kp, cos, sin], b.shape(kp), st, exclude=exclude)
            k = b.add(f"{n}.k_sum", k, kp, st)
        a = b.op(f"{n}.sdpa", "attention", [q, k, v], b.shape(q), st, heads=1)
        return b.linear(f"{n}.out", a, f"{p}.out_proj.weight", mod.o_w, f"{p}.out_proj.bias", mod.o_b, st)

    for i, layer in enumerate(ma.layers):
        p, n = f"memory_attention.layers.{i}", f"ma.layers.{i}"
        (n1w, n1b), (n2w, n2b), (n3w, n3b) = layer.norms
        t = b.layernorm(f"{n}.norm1", x, f"{p}.norm1", n1w, n1b, EPS_MEMATTN, st)
        x = b.add(f"{n}.self_res", x, attention(f"{n}.self", f"{p}.self_attn", layer.self_attn, t, t, t, 0), st)
        t = b.layernorm(f"{n}.norm2", x, f"{p}.norm2", n2w, n2b, EPS_MEMATTN, st)
        a = attention(f"{n}.cross", f"{p}.cross_attn_image", layer.cross_attn, t, mem, mem, "O",
                      mpos if acfg.pos_enc_at_cross_attn_keys else None)
        x = b.add(f"{n}.cross_res", x, a, st)
        t = b.layernorm(f"{n}.norm3", x, f"{p}.norm3", n3w, n3b, EPS_MEMATTN, st)
        if acfg.activation != "relu":
            raise ValueError("the int8 video graph is built for the ReLU memory-attention FFN (sam2.1)")
        h = b.linear(f"{n}.linear1", t, f"{p}.linear1.weight", layer.l1_w, f"{p}.linear1.bias", layer.l1_b, st,
                     relu=True)
        h = b.linear(f"{n}.linear2", h, f"{p}.linear2.weight", layer.l2_w, f"{p}.linear2.bias", layer.l2_b, st)
        x = b.add(f"{n}.mlp_res", x, h, st)
    out = b.layernorm("ma.norm", x, "memory_attention.norm", ma.norm_w, ma.norm_b, EPS_MEMATTN, st)
    b.op("ma.to_decoder", "rescale", [out], b.shape(out), st)


def missing_video(graph: Graph) -> list[str]:
    """The video tensors `graph` lacks (empty when the video path can run)."""
    if "video" not in graph.meta:
        return list(VIDEO_TENSORS)
    return [t for t in VIDEO_TENSORS if t not in graph.tensors]


def missing_mask_prompts(graph: Graph) -> list[str]:
    """What `graph` lacks for mask prompts and corrections: the image graph's mask branch, and with the video
    part the mask downsampler's weights and MASK_PIX (empty when they can run)."""
    missing = missing_mask_path(graph)
    if "video" in graph.meta:
        missing += [t for t in MASK_DOWNSAMPLE if t not in graph.constants]
        missing += [MASK_PIX] * (MASK_PIX not in graph.tensors)
    return missing


def require_mask_prompts(graph: Graph, what: str = "the int8 model") -> None:
    require_mask_path(graph, what, missing_mask_prompts(graph))


def require_video(graph: Graph, what: str = "the graph") -> None:
    missing = missing_video(graph)
    if missing:
        raise VideoGraphError(f"{what} has no video part (memory encoder, memory attention, int8 memory bank): "
                              f"missing {', '.join(missing)}; re-run `sam2fpga quantize` to write one with it")


# ---------------------------------------------------------------- running
def _excluded(node, runner) -> int:
    e = node.attrs.get("exclude", 0)
    return runner.run_dims[e] if isinstance(e, str) else int(e)


def _tokens(x):
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _rope_float(n, a, r):
    """RoPE (official interleaved pairs) on all tokens but the last `exclude` (object pointers)."""
    x, cos, sin = a
    flat = _tokens(np.asarray(x, F32))
    keep = flat.shape[1] - _excluded(n, r)
    out = flat.copy()
    out[:, :keep] = apply_rope(flat[:, :keep], cos, sin)
    return out.reshape(x.shape)


def rope_parts(n, a, r):
    """A rope node's (tokens (N, L, D), rotated tokens `keep`, intvec.RopeParams, the tail's RescaleParams)."""
    x, cos, sin = a
    p = r.params[n.name]
    rp = r.cached(("rope", n.name), lambda: intvec.RopeParams(cos, sin, int(p["multiplier"][0]), int(p["shift"][0])))
    tail = r.cached(("rope_tail", n.name), lambda: intvec.RescaleParams.from_arrays(
        {k[len("tail_"):]: v for k, v in p.items() if k.startswith("tail_")}))
    flat = _tokens(x)
    return flat, flat.shape[1] - _excluded(n, r), rp, tail


def _rope_int(n, a, r):
    """intvec.rope on the rotated tokens; the excluded tail is intvec.rescale'd to the same out scale."""
    x = a[0]
    flat, keep, rp, tail = rope_parts(n, a, r)
    out = np.empty(flat.shape, np.int8)
    if keep:
        out[:, :keep] = intvec.rope(flat[:, :keep], rp)
    if keep < flat.shape[1]:
        out[:, keep:] = intvec.rescale(flat[:, keep:], tail)
    return out.reshape(x.shape)


def depthwise_acc(x: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    """intconv.conv2d_acc(x, w, padding=padding, groups=C) (stride 1) as K x K shifted int32 multiply-adds:
    the same integers (|x w| <= 2^14, at most 49 terms: < 2^20) without a (C, K*K, H*W) float64 im2col
    (411 MB for the fuser's 256 x 64 x 64 at 1024)."""
    c, h, wd = x.shape
    k = w.shape[-1]
    xp = np.zeros((c, h + 2 * padding, wd + 2 * padding), np.int32)
    xp[:, padding:padding + h, padding:padding + wd] = x
    ho, wo = h + 2 * padding - k + 1, wd + 2 * padding - k + 1
    acc = np.zeros((c, ho, wo), np.int32)
    wi = w.reshape(c, k, k).astype(np.int32)
    for i in range(k):
        for j in range(k):
            acc += xp[:, i:i + ho, j:j + wo] * wi[:, i, j, None, None]
    return acc.astype(np.int64)


def _depthwise_int(n, a, r):
    """The depthwise engine (intconv's numbers, stride 1, see depthwise_acc), channels-last in the graph."""
    from golden_model.intconv import requantize_channels
    x, w, b = a
    if n.attrs["stride"] != 1:
        raise ValueError(f"{n.name}: the fast depthwise path is for stride 1")
    p = r.params[n.name]
    ys = [requantize_channels(depthwise_acc(xi, w, n.attrs["padding"]), b, p["multiplier"], p["shift"])
          for xi in x.transpose(0, 3, 1, 2)]
    return np.ascontiguousarray(np.stack(ys).transpose(0, 2, 3, 1))


def _bank(n, a, r):
    return r.bank[n.attrs["part"]]


class _VideoRunner:
    """What the video nodes read besides their inputs: the gathered bank and the pointer-token count."""
    bank: dict
    run_dims: dict

    def node_fn(self, node):
        """The function running `node` in run_nodes (a runner on the overlay places it)."""
        return self.OPS[node.op]

    def nodes_named(self, names) -> list:
        """The graph's nodes called `names`, in that order."""
        index = self.cached("node_index", lambda: {n.name: n for n in self.graph.nodes})
        return [index[name] for name in names]

    def run_nodes(self, names, env: dict, observe=None) -> dict:
        """Run the named nodes in order on `env` (updated and returned)."""
        for node in self.nodes_named(names):
            out = self.node_fn(node)(node, [self.arg(i, env) for i in node.inputs], self)
            env[node.outputs[0]] = out
            if observe is not None:
                observe(node, out)
        return env


class VideoFloatRunner(_VideoRunner, FloatRunner):
    OPS = {**FLOAT_OPS, "rope": _rope_float, "memory_bank": _bank}


class VideoIntRunner(_VideoRunner, IntRunner):
    OPS = {**INT_OPS, "rope": _rope_int, "memory_bank": _bank, "depthwise": _depthwise_int}


# ---------------------------------------------------------------- the tracker around a graph
class GraphImageModel:
    """SAM2Base.forward_image / _forward_sam_heads over a graph runner (the Tracker's image_model).
    Features stay in the runner's number format (int8 for the integer runner)."""

    def __init__(self, graph: Graph, runner, observe=None):
        from golden_model.mask_decoder import MaskDecoderConfig
        from golden_model.quant.predictor import _DecoderOutputs
        self.graph, self.runner, self.observe = graph, runner, observe
        self.video = graph.meta["video"]
        self.decoder = _DecoderOutputs(MaskDecoderConfig(**graph.meta["decoder_cfg"]))
        self.int8 = isinstance(runner, IntRunner)

    def forward_image(self, img: np.ndarray) -> dict:
        env = self.runner.run({"image": np.ascontiguousarray(np.asarray(img, F32).transpose(0, 2, 3, 1))},
                              stages=("image_encoder",), observe=self.observe)
        _, s1, s0 = self.graph.meta["image_outputs"]
        nchw = [env[t].transpose(0, 3, 1, 2) for t in (s0, s1, self.video["curr"])]
        return {"backbone_fpn": nchw, "vision_pos_enc": [np.zeros((1, 1, 1, 1), F32)] * 3}

    def forward_sam_heads(self, backbone_features, point_inputs=None, mask_inputs=None, high_res_features=None,
                          multimask_output=False):
        from golden_model.quant.predictor import mask_feed
        g, meta = self.graph, self.graph.meta
        emb, s1, s0 = meta["image_outputs"]
        env = {emb: backbone_features, s1: high_res_features[1].transpose(0, 2, 3, 1),
               s0: high_res_features[0].transpose(0, 2, 3, 1)}
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:  # no points: one padding point
            coords, labels = np.zeros((1, 1, 2), F32), -np.ones((1, 1), F32)
        feeds = {"point_coords": np.asarray(coords, F32), "point_labels": np.asarray(labels, F32)}
        if mask_inputs is not None:     # SAM2Base._forward_sam_heads: resized to the prompt size if needed
            size = g.tensors[MASK_INPUT].shape[1:3] if MASK_INPUT in g.tensors else None
            m = np.asarray(mask_inputs, F32)
            feeds.update(mask_feed(g, m if size is None or m.shape[-2:] == size else resize_antialias(m, size),
                                   "the int8 model"))
        out = self.runner.run(feeds, stages=("prompt_encoder", "mask_decoder"), env=env, observe=self.observe)
        s, n = meta["obj_token"], meta["num_mask_tokens"]
        obj = out["obj_score"]
        sel = self.decoder.select_outputs(out["masks"], out["iou_pred"], out["hs"][:, s + 1:s + 1 + n], obj,
                                          multimask_output)
        is_obj = obj > 0
        low_multi = np.where(is_obj[:, None, None], sel.masks, F32(NO_OBJ_SCORE)).astype(F32)
        size = g.image_size
        high_multi = resize_bilinear(low_multi, (size, size))
        ious, tokens = sel.iou_pred, sel.sam_tokens_out
        sam_token = tokens[:, 0]
        if multimask_output:
            best = np.argmax(ious, axis=-1)
            rows = np.arange(low_multi.shape[0])
            low, high = low_multi[rows, best][:, None], high_multi[rows, best][:, None]
            if tokens.shape[1] > 1:
                sam_token = tokens[rows, best]
        else:
            low, high = low_multi, high_multi
        ptr = self.runner.run_nodes(self.video["obj_ptr_nodes"], {"vid.sam_token": sam_token[:, None].astype(F32)},
                                    self.observe)[self.video["obj_ptr"]]
        lam = is_obj.astype(F32)
        ptr = lam * ptr + (F32(1) - lam) * g.constants["no_obj_ptr"]
        return low_multi, high_multi, ious, low, high, ptr, obj      # the tracker banks ptr (track_step)

    @property
    def no_obj_ptr(self) -> np.ndarray:
        return self.graph.constants["no_obj_ptr"]

    def bank_pointer(self, ptr: np.ndarray) -> np.ndarray:
        """An object pointer as the bank stores it: int8 at the memory's scale (float on the float runner)."""
        if self.int8:
            return quantize_tensor(ptr, self.graph.tensors["ma.memory"].scale)
        return np.asarray(ptr, F32)


def tracker_config(graph: Graph) -> TrackerConfig:
    """The tracking options of the graph's model (sam2.1 configs) at the graph's input size."""
    from golden_model.config import load_config
    return replace(TrackerConfig.from_config(load_config(graph.model)), image_size=graph.image_size)


class GraphTracker(Tracker):
    """golden_model.video.Tracker (the same memory selection, object pointers and tracking step) with
    the memory encoder, memory attention and SAM heads computed by the graph; the bank holds what the
    runner computes (int8 frames and pointers for the integer runner)."""

    def __init__(self, graph: Graph, runner, observe=None):
        require_video(graph)
        self.cfg, self.graph, self.runner, self.observe = tracker_config(graph), graph, runner, observe
        self.image_model = GraphImageModel(graph, runner, observe)
        self.video = graph.meta["video"]
        self.int8 = self.image_model.int8

    def bank_features(self, feats):
        return feats if self.int8 else to_bfloat16(feats)

    def temporal_slot(self, t_pos: int) -> int:
        """The maskmem_tpos_enc slot of a memory frame `t_pos` frames back (0: a conditioning frame)."""
        return self.cfg.num_maskmem - t_pos - 1

    def frame_tokens(self, prev: dict) -> np.ndarray:
        """A memory frame's features as memory tokens (1, HW, mem_dim)."""
        return prev["maskmem_features"].reshape(1, -1, self.cfg.mem_dim)

    def slot_encoding(self, slot: int) -> np.ndarray:
        """A memory frame's position encoding in temporal slot `slot` (sine + maskmem_tpos_enc[slot])."""
        return self.graph.constants[SLOTS][slot]

    def track_step(self, *args, **kwargs) -> dict:
        """Tracker.track_step with the object pointer as the bank stores it (int8 on the integer runner)."""
        out = super().track_step(*args, **kwargs)
        out["obj_ptr"] = self.image_model.bank_pointer(out["obj_ptr"])
        return out

    def use_mask_as_output(self, backbone_features, high_res_features, mask_inputs):
        """Tracker.use_mask_as_output with the mask downsampler's weights from the graph and the frame's raw
        features (int8 at `curr`'s scale) rescaled to the decoder's input scale (module docstring)."""
        g = self.graph
        require_mask_prompts(g)
        self.mask_downsample = tuple(g.constants[t] for t in MASK_DOWNSAMPLE)
        pix = self.runner.run_nodes([MASK_PIX], {self.video["curr"]: np.ascontiguousarray(
            np.asarray(backbone_features).transpose(0, 2, 3, 1))}, self.observe)[MASK_PIX]
        return super().use_mask_as_output(pix, high_res_features, mask_inputs)

    def prepare_memory_conditioned_features(self, frame_idx, is_init_cond_frame, vision_feat, vision_pos,
                                            output_dict, num_frames, track_in_reverse=False):
        v = self.video
        b, hw, c = vision_feat.shape
        side = math.isqrt(hw)
        env = {v["curr"]: vision_feat.reshape(b, side, side, c)}
        if is_init_cond_frame:        # directly_add_no_mem_embed (sam2.1): the image path's image_embed node
            return self.runner.run_nodes([v["image_embed"]], env, self.observe)[v["image_embed"]]
        self.runner.bank, n_ptr_tokens = self.memory_inputs(frame_idx, output_dict, num_frames, track_in_reverse)
        self.runner.run_dims = {"O": n_ptr_tokens}
        return self.runner.run_nodes(v["memory_attention"], env, self.observe)["ma.to_decoder"]

    def memory_inputs(self, frame_idx, output_dict, num_frames, track_in_reverse=False) -> tuple[dict, int]:
        """The memory attention's gathered bank ({"memory", "memory_pos"}: (1, K, mem_dim)) on a non-initial
        frame and its object-pointer token count (the last tokens of the memory)."""
        cfg, g = self.cfg, self.graph
        c = cfg.hidden_dim
        frames, selected, unselected = self.memory_frames(frame_idx, output_dict, track_in_reverse)
        memory = [self.frame_tokens(prev) for _, prev in frames]
        memory_pos = [self.slot_encoding(self.temporal_slot(t_pos))[None] for t_pos, _ in frames]
        pos_and_ptrs, t_diff_max = self.object_pointer_list(frame_idx, selected, unselected, output_dict,
                                                            num_frames, track_in_reverse)
        n_ptr_tokens = 0
        if pos_and_ptrs:
            split = c // cfg.mem_dim
            ptrs = np.stack([np.asarray(p).reshape(-1) for _, p in pos_and_ptrs])       # (P, C)
            memory.append(ptrs.reshape(1, -1, cfg.mem_dim))                             # P * split tokens
            pos = get_1d_sine_pe((np.array([p for p, _ in pos_and_ptrs]) / t_diff_max).astype(F32), c)
            pos = nn.linear(pos, g.constants["obj_ptr_tpos_proj.weight"], g.constants["obj_ptr_tpos_proj.bias"])
            pos = np.repeat(pos, split, axis=0)[None]
            if self.int8:
                pos = quantize_tensor(pos, g.tensors["ma.memory_pos"].scale)
            memory_pos.append(pos)
            n_ptr_tokens = ptrs.shape[0] * split
        bank = {"memory": np.concatenate(memory, axis=1), "memory_pos": np.concatenate(memory_pos, axis=1)}
        return bank, n_ptr_tokens

    def encode_new_memory(self, vision_feat, pred_masks_high_res, object_score_logits, is_mask_from_pts):
        cfg, v = self.cfg, self.video
        b, hw, c = vision_feat.shape
        side = math.isqrt(hw)
        mask = mask_for_memory(pred_masks_high_res, scale=cfg.sigmoid_scale_for_mem_enc,
                               bias=cfg.sigmoid_bias_for_mem_enc,
                               binarize=cfg.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts)
        absent = (np.asarray(object_score_logits).reshape(-1) <= 0).astype(F32)
        no_obj = absent[:, None] * self.graph.constants["no_obj_embed_spatial"].reshape(1, -1)
        env = {v["curr"]: vision_feat.reshape(b, side, side, c), "mem.mask_f": mask.transpose(0, 2, 3, 1),
               "mem.no_obj_f": no_obj.reshape(b, 1, 1, -1)}
        feats = self.runner.run_nodes(v["memory_encoder"], env, self.observe)["mem.features"]
        return feats, np.zeros((1, 1), F32)   # the position encoding is the graph's constant (per slot)


def graph_video_predictor(graph: Graph, runner, observe=None, **kwargs) -> VideoPredictor:
    """golden_model.video.VideoPredictor (init_state, add_new_points_or_box, propagate_in_video, ...) on a graph."""
    return VideoPredictor(GraphTracker(graph, runner, observe), **kwargs)


# ---------------------------------------------------------------- calibration and quantisation
def shifted_frames(photo: np.ndarray, n: int, step=(6, 4)) -> list[np.ndarray]:
    """`n` video frames from one photo: the photo shifted by k * step pixels (x, y), edges wrapped."""
    return [np.roll(photo, (k * step[1], k * step[0]), axis=(0, 1)) for k in range(n)]


def share_stats(stats: dict) -> None:
    """Tensors that must share one scale share one TensorStats: the bank gather and the memory frames
    (pointers are quantised at it too), the decoder's input from memory attention and image_embed."""
    stats["ma.memory"] = stats.setdefault("mem.features", TensorStats())
    if "image_embed" in stats:
        stats["ma.to_decoder"] = stats[MASK_PIX] = stats["image_embed"]


def calibrate_video(graph: Graph, photos, stats: dict, frames_per_video: int = VIDEO_FRAMES_PER_PHOTO,
                    seed: int = 0) -> dict:
    """Track one centre click through shifted copies of each photo on the float graph, adding the
    statistics of every int8 tensor the video path touches to `stats` (from quantize.calibrate)."""
    require_video(graph)
    if not photos:
        raise ValueError("video calibration needs at least one photo")
    rng = np.random.default_rng(seed)
    share_stats(stats)
    stats.setdefault("mem.no_obj", TensorStats()).observe(graph.constants["no_obj_embed_spatial"], rng)

    def observe(node, value):
        name = stats_key(node)
        if graph.tensors[name].dtype == "int8" and node.op not in SCALE_PASSES:
            stats.setdefault(name, TensorStats()).observe(value, rng)
    runner = VideoFloatRunner(graph)
    predictor = graph_video_predictor(graph, runner, observe)
    tracker = predictor.tracker
    for photo in photos:
        tracker.observe = tracker.image_model.observe = observe
        photo = np.asarray(photo)
        state = predictor.init_state(shifted_frames(photo, frames_per_video))
        h, w = photo.shape[:2]
        predictor.add_new_points_or_box(state, 0, 1, points=[[w / 2, h / 2]], labels=[1])
        for idx, _, logits in predictor.propagate_in_video(state):
            pass
        # a correction (the previous logits through the mask branch) and a mask prompt on the last frame,
        # observed in the mask branch only (quantize.mask_branch_only)
        tracker.observe = tracker.image_model.observe = mask_branch_only(observe)
        predictor.add_new_points_or_box(state, idx, 1, points=[[w / 2, h / 2]], labels=[1])
        predictor.add_new_mask(state, idx, 1, logits[0, 0] > 0)
    return stats


def rope_arrays(in_scale: float, out_scale: float) -> dict[str, np.ndarray]:
    """A rope node's parameters: the requantiser of intvec.rope (in / out / 2^14) and the excluded tokens'
    intvec.RescaleParams (prefixed tail_)."""
    m, s = quantize_multiplier(in_scale / out_scale / (1 << intvec.ROPE_FRAC_BITS))
    tail = intvec.RescaleParams.make(in_scale, out_scale).to_arrays()
    return {"multiplier": np.array([m], np.int64), "shift": np.array([s], np.int64),
            **{f"tail_{k}": v for k, v in tail.items()}}


def check_rope_arrays(arrays: dict) -> None:
    """ValueError naming what is wrong with a rope node's parameter arrays."""
    intvec.RescaleParams.from_arrays({k[len("tail_"):]: v for k, v in arrays.items() if k.startswith("tail_")})
    for k in ("multiplier", "shift"):
        if np.asarray(arrays[k]).shape != (1,):
            raise ValueError(f"rope {k}: expected one value, got shape {np.shape(arrays[k])}")


def quantize_video(graph: Graph, stats: dict, estimator: str = "percentile", key_tile: int = 32,
                   preset: str = "kv260"):
    """quantize.quantize of the full graph plus the video parts it does not know: RoPE requantisers and
    int16 tables, the int8 slot encodings of the bank."""
    share_stats(stats)
    qm = quantize(graph, stats, estimator, key_tile, preset)
    g = qm.graph
    if "video" not in g.meta:
        return qm
    for n in g.nodes:
        if n.op == "rope":
            qm.params[n.name] = rope_arrays(g.tensors[n.inputs[0]].scale, g.tensors[n.outputs[0]].scale)
    tables = intvec.RopeParams.make(graph.constants[ROPE_COS], graph.constants[ROPE_SIN], 1.0, 1.0)
    g.constants[ROPE_COS], g.constants[ROPE_SIN] = tables.cos, tables.sin
    g.constants[SLOTS] = quantize_tensor(graph.constants[SLOTS], g.tensors["ma.memory_pos"].scale)
    return qm
