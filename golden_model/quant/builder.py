"""SAM 2's image path as a `Graph`, built from a golden_model.model.SAM2Model.

    graph = build_graph(SAM2Model("tiny", seed=0))
    print(graph.summary())

Stages (official numerics, sam2/modeling/backbones/hieradet.py, image_encoder.py,
sam/mask_decoder.py, sam/transformer.py; not the float golden model's fused rewrites):
  image_encoder   patch embed, position embedding, Hiera blocks (windows zero-padded AFTER norm1,
                  padded tokens attended to unmasked; q-pooling = 2x2 max of q per window and of the
                  projected shortcut; global blocks = one window of the whole map), FPN neck (1x1
                  laterals, nearest 2x top-down sums), conv_s0 / conv_s1, + no_mem_embed on the
                  stride-16 level (SAM2ImagePredictor.set_image)
  prompt_encoder  host: points -> tokens (output tokens + sparse prompt embeddings); the mask
                  prompt branch (mask_prompt below) in integers
  mask_decoder    + no_mask_embed, two-way transformer, output upscaling (2 transposed convs,
                  high-res adds, LayerNorm2d, GELU), host MLPs on single tokens (hypernetworks,
                  IoU head, object score head), the mask product (hypernetwork weights x upscaled
                  embedding) and its dequantisation. The token stream (T ~ 8 rows: output tokens +
                  prompt points) stays on the host in float: in the two-way transformer
                  (_Builder.host_float), every node whose activation inputs are all float32 tensors
                  is a host node (attrs host=True; token self-attention, the token
                  projections, norms, MLPs and residual adds); the token <-> image attentions run on
                  the attention engine with the token side quantised into it (docs/quantisation.md:
                  their MACs and bytes, and the accuracy this buys).
The mask prompt (PromptEncoder.mask_downscaling: conv 2x2/s2, LayerNorm2d, GELU, conv 2x2/s2,
LayerNorm2d, GELU, conv 1x1, then + the image embedding) is a branch: its nodes carry attrs
branch=MASK_INPUT and run only when the host feeds that tensor; its last node (replaces="src")
then stands for `src` (image embedding + no_mask_embed), at src's scale (one calibration
statistic, quantize.stats_key), so the decoder after it is the same for both.
Hiera's qkv projection is three linear nodes (q, k, v: same weights, row blocks of qkv.weight,
constants "<key>#q" etc.) so each gets its own activation scale.
"""
from __future__ import annotations

import numpy as np

from golden_model.quant.graph import Graph

EPS_HIERA = 1e-6            # MultiScaleBlock's LayerNorm
EPS_DECODER = 1e-5          # transformer.py LayerNorm default
EPS_LAYERNORM2D = 1e-6      # sam2_utils.LayerNorm2d
MASK_INPUT = "mask_input"   # the mask prompt fed by the host: low-res logits (1, 4h, 4w, 1) float32
#: the tensors of the mask prompt branch (named when a quantised file lacks them)
MASK_TENSORS = (MASK_INPUT, "pe.mask_q", "pe.mask.conv0", "pe.mask.norm1", "pe.mask.gelu2", "pe.mask.conv3",
                "pe.mask.norm4", "pe.mask.gelu5", "pe.mask.conv6", "src.mask")


class _Builder:
    def __init__(self, g: Graph):
        self.g = g
        self.host_float = False     # set while building the decoder's two-way transformer (on_host)
        self.attrs: dict = {}       # added to every node built (the mask prompt's branch attrs)

    def t(self, name, shape, dtype="int8"):
        return self.g.tensor(name, shape, dtype)

    def shape(self, name):
        return self.g.tensors[name].shape

    def op(self, name, op, inputs, out_shape, stage, dtype="int8", **attrs):
        out = self.t(name, out_shape, dtype)
        self.g.add(name, op, inputs, [out], stage, **{**self.attrs, **attrs})
        return out

    def on_host(self, *xs) -> bool:
        """With host_float set, a node whose activation inputs are all float32 tensors runs on the host
        (the decoder's token stream); otherwise every node is an integer node, as before."""
        ts = [x for x in xs if x in self.g.tensors]
        return self.host_float and bool(ts) and all(self.g.tensors[x].dtype == "float32" for x in ts)

    def host_or_int(self, name, op, inputs, out_shape, stage, **attrs):
        """`op` on the host in float (attrs host=True, float32 out) when its inputs are host tensors, else int8."""
        if self.on_host(*inputs):
            return self.op(name, op, inputs, out_shape, stage, "float32", host=True, **attrs)
        return self.op(name, op, inputs, out_shape, stage, **attrs)

    def to_int8(self, x, stage):
        """x as int8: a host quantize node for a float32 tensor, x itself otherwise."""
        if self.g.tensors[x].dtype != "float32":
            return x
        return self.op(f"{x}_q", "quantize", [x], self.shape(x), stage)

    def to_float(self, x, stage):
        """x as a host float32 tensor: a dequantize node for an int8 tensor, x itself otherwise."""
        if self.g.tensors[x].dtype == "float32":
            return x
        return self.op(f"{x}_f", "dequantize", [x], self.shape(x), stage, "float32")

    def linear(self, name, x, w_key, w, b_key, b, stage, relu=False):
        wn = self.g.const(w_key, w)
        bn = self.g.const(b_key, b)
        return self.host_or_int(name, "linear", [x, wn, bn], self.shape(x)[:-1] + (w.shape[0],), stage, relu=relu)

    def layernorm(self, name, x, key, weight, bias, eps, stage):
        gn, bn = self.g.const(key + ".weight", weight), self.g.const(key + ".bias", bias)
        return self.host_or_int(name, "layernorm", [x, gn, bn], self.shape(x), stage, eps=eps)

    def add(self, name, a, b, stage):
        return self.host_or_int(name, "add", [a, b], self.shape(a), stage)

    def unary(self, name, op, x, stage):
        return self.op(name, op, [x], self.shape(x), stage)


def build_graph(model, n_points: int = 1) -> Graph:
    """The image-path graph of `model` (a SAM2Model); decoder token count T = output tokens + points + 1 pad."""
    g = Graph(model.name, model.image_size)
    b = _Builder(g)
    _image_encoder(b, model)
    _decoder(b, model, n_points)
    return g


# ---------------------------------------------------------------- image encoder
def _image_encoder(b: _Builder, model) -> None:
    g, st = b.g, "image_encoder"
    s = model.image_size
    trunk = model.image_encoder.trunk
    img = b.t("image", (1, s, s, 3), "float32")
    x = b.op("image_q", "quantize", [img], (1, s, s, 3), st)
    pre = "image_encoder.trunk"
    w = g.const(f"{pre}.patch_embed.proj.weight", trunk.patch_w)
    bias = g.const(f"{pre}.patch_embed.proj.bias", trunk.patch_b)
    hp = (s + 2 * 3 - 7) // 4 + 1
    x = b.op("patch_embed", "conv", [x, w, bias], (1, hp, hp, trunk.patch_w.shape[0]), st, k=7, stride=4, padding=3)
    pos = g.const(f"{pre}.pos_embed#grid", trunk.position_embedding(hp, hp)[None])
    x = b.add("pos_embed", x, pos, st)
    feats = []
    for i, blk in enumerate(trunk.blocks):
        x = _hiera_block(b, f"{pre}.blocks.{i}", blk, x)
        if i in trunk.stage_ends:
            feats.append(x)
    # FPN neck (FpnNeck.forward)
    neck = model.image_encoder.neck
    cfg = neck.cfg
    if cfg.fuse_type != "sum":
        raise ValueError(f"FPN fuse {cfg.fuse_type!r}: only 'sum' (sam2.1) is built")
    n = len(neck.convs) - 1
    out = [None] * (n + 1)
    prev = None
    for i in range(n, -1, -1):
        cw, cb = neck.convs[n - i]
        key = f"image_encoder.neck.convs.{n - i}.conv"
        lat = b.linear(f"neck.lateral{i}", feats[i], key + ".weight", cw, key + ".bias", cb, st)
        if i in cfg.fpn_top_down_levels and prev is not None:
            up = b.op(f"neck.up{i}", "upsample2x", [prev], b.shape(lat), st)
            prev = b.add(f"neck.fpn{i}", lat, up, st)
        else:
            prev = lat
        out[i] = prev
    scalp = model.image_encoder.cfg.scalp
    levels = out[:len(out) - scalp] if scalp else out
    dec = model.sam_mask_decoder
    if not model.use_high_res_features_in_sam:
        raise ValueError("the graph is built for use_high_res_features_in_sam (every sam2.1 config)")
    s0 = b.linear("feat_s0", levels[0], "sam_mask_decoder.conv_s0.weight", dec.conv_s0[0],
                  "sam_mask_decoder.conv_s0.bias", dec.conv_s0[1], st)
    s1 = b.linear("feat_s1", levels[1], "sam_mask_decoder.conv_s1.weight", dec.conv_s1[0],
                  "sam_mask_decoder.conv_s1.bias", dec.conv_s1[1], st)
    emb = levels[-1]
    if model.directly_add_no_mem_embed:
        emb = b.add("image_embed", emb, g.const("no_mem_embed", model.no_mem_embed.reshape(-1)), st)
    g.inputs = ("image",)
    g.meta["image_outputs"] = (emb, s1, s0)


def _hiera_block(b: _Builder, p: str, blk, x: str) -> str:
    """MultiScaleBlock.forward as nodes; p is the block's official key prefix."""
    st = "image_encoder"
    n = p.replace("image_encoder.trunk.", "enc.")
    _, h, w, _ = b.shape(x)
    ln1 = b.layernorm(f"{n}.norm1", x, p + ".norm1", blk.norm1.weight, blk.norm1.bias, EPS_HIERA, st)
    shortcut = x
    if blk.proj is not None:
        shortcut = b.linear(f"{n}.proj", ln1, p + ".proj.weight", blk.proj.weight, p + ".proj.bias",
                            blk.proj.bias, st)
        if blk.q_stride:
            shortcut = _pool(b, f"{n}.proj_pool", shortcut, blk.q_stride)
    ws = blk.window_size
    win = ln1
    if ws > 0:
        nwin = (-(-h // ws)) * (-(-w // ws))
        win = b.op(f"{n}.window", "window_partition", [ln1], (nwin, ws, ws, b.shape(ln1)[-1]), st, ws=ws)
    attn = blk.attn
    do = attn.dim_out
    qkv_w, qkv_b = attn.qkv.weight, attn.qkv.bias
    q, k, v = (b.linear(f"{n}.attn.{part}", win, f"{p}.attn.qkv.weight#{part}", qkv_w[j * do:(j + 1) * do],
                        f"{p}.attn.qkv.bias#{part}", qkv_b[j * do:(j + 1) * do], st)
               for j, part in enumerate("qkv"))
    if blk.q_stride:
        q = _pool(b, f"{n}.attn.q_pool", q, blk.q_stride)
    a = b.op(f"{n}.attn.sdpa", "attention", [q, k, v], b.shape(q), st, heads=attn.num_heads)
    o = b.linear(f"{n}.attn.proj", a, p + ".attn.proj.weight", attn.proj.weight, p + ".attn.proj.bias",
                 attn.proj.bias, st)
    if ws > 0:
        _, hs, wsz, _ = b.shape(shortcut)
        o = b.op(f"{n}.unwindow", "window_unpartition", [o], (1, hs, wsz, do), st, ws=b.shape(o)[1])
    x = b.add(f"{n}.res1", shortcut, o, st)
    ln2 = b.layernorm(f"{n}.norm2", x, p + ".norm2", blk.norm2.weight, blk.norm2.bias, EPS_HIERA, st)
    h1 = b.linear(f"{n}.mlp.fc1", ln2, p + ".mlp.layers.0.weight", blk.mlp.fc1.weight, p + ".mlp.layers.0.bias",
                  blk.mlp.fc1.bias, st)
    h1 = b.unary(f"{n}.mlp.gelu", "gelu", h1, st)
    h2 = b.linear(f"{n}.mlp.fc2", h1, p + ".mlp.layers.1.weight", blk.mlp.fc2.weight, p + ".mlp.layers.1.bias",
                  blk.mlp.fc2.bias, st)
    return b.add(f"{n}.res2", x, h2, st)


def _pool(b: _Builder, name: str, x: str, stride) -> str:
    if tuple(stride) != (2, 2):
        raise ValueError(f"q_stride {stride}: only 2x2 pooling is built")
    nb, h, w, c = b.shape(x)
    return b.op(name, "maxpool2x2", [x], (nb, h // 2, w // 2, c), "image_encoder")


# ---------------------------------------------------------------- decoder
def _decoder(b: _Builder, model, n_points: int) -> None:
    g = b.g
    dec = model.sam_mask_decoder
    pe = model.sam_prompt_encoder
    cfg = dec.cfg
    c = cfg.transformer_dim
    emb, s1, s0 = g.meta["image_outputs"]
    _, h, w, _ = b.shape(emb)
    n_out = (1 if cfg.pred_obj_scores else 0) + 1 + dec.num_mask_tokens
    g.dims = {"T": n_out + n_points + 1, "P": n_points}
    # host: the prompt encoder's sparse embeddings after the learned output tokens (MaskDecoder.predict_masks)
    coords = b.t("point_coords", (1, "P", 2), "float32")
    labels = b.t("point_labels", (1, "P"), "float32")
    consts = [g.const(f"sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", pe.pe_layer.gaussian)]
    consts += [g.const(f"sam_prompt_encoder.point_embeddings.{i}.weight", e[None])
               for i, e in enumerate(pe.point_embeddings)]
    consts.append(g.const("sam_prompt_encoder.not_a_point_embed.weight", pe.not_a_point_embed[None]))
    parts = ([dec.obj_score_token] if cfg.pred_obj_scores else []) + [dec.iou_token, dec.mask_tokens]
    consts.append(g.const("sam_mask_decoder.output_tokens#concat", np.concatenate(parts, 0)))
    tok_f = b.op("tokens_f", "prompt_encoder", [coords, labels] + consts, (1, "T", c), "prompt_encoder", "float32",
                 input_image_size=pe.input_image_size[0])
    st = "mask_decoder"
    tok = tok_f     # the token stream stays on the host in float (module docstring)
    _mask_prompt(b, pe, emb)
    b.host_float = True
    src = b.add("src", emb, g.const("sam_prompt_encoder.no_mask_embed.weight", pe.no_mask_embed), st)
    key_pe = g.const("sam_prompt_encoder.dense_pe#grid", pe.get_dense_pe()[0].transpose(1, 2, 0)[None])
    tr = dec.transformer
    p = "sam_mask_decoder.transformer"
    queries, keys = tok, src
    for i, layer in enumerate(tr.layers):
        lp, ln = f"{p}.layers.{i}", f"dec.layers.{i}"
        if layer.skip_first_layer_pe:
            queries = _attention(b, f"{ln}.self_attn", f"{lp}.self_attn", layer.self_attn, queries, queries, queries)
        else:
            qq = b.add(f"{ln}.self_q", queries, tok, st)
            a = _attention(b, f"{ln}.self_attn", f"{lp}.self_attn", layer.self_attn, qq, qq, queries)
            queries = b.add(f"{ln}.self_res", queries, a, st)
        queries = _ln(b, f"{ln}.norm1", f"{lp}.norm1", layer.norm1, queries)
        qq = b.add(f"{ln}.t2i_q", queries, tok, st)
        kk = b.add(f"{ln}.t2i_k", keys, key_pe, st)
        a = _attention(b, f"{ln}.t2i", f"{lp}.cross_attn_token_to_image", layer.cross_attn_token_to_image,
                       qq, kk, keys)
        queries = _ln(b, f"{ln}.norm2", f"{lp}.norm2", layer.norm2, b.add(f"{ln}.t2i_res", queries, a, st))
        m = layer.mlp.layers
        hdn = b.linear(f"{ln}.mlp.fc1", queries, f"{lp}.mlp.layers.0.weight", m[0].weight,
                       f"{lp}.mlp.layers.0.bias", m[0].bias, st, relu=True)
        hdn = b.linear(f"{ln}.mlp.fc2", hdn, f"{lp}.mlp.layers.1.weight", m[1].weight,
                       f"{lp}.mlp.layers.1.bias", m[1].bias, st)
        queries = _ln(b, f"{ln}.norm3", f"{lp}.norm3", layer.norm3, b.add(f"{ln}.mlp_res", queries, hdn, st))
        qq = b.add(f"{ln}.i2t_q", queries, tok, st)
        kk = b.add(f"{ln}.i2t_k", keys, key_pe, st)
        a = _attention(b, f"{ln}.i2t", f"{lp}.cross_attn_image_to_token", layer.cross_attn_image_to_token,
                       kk, qq, queries)
        keys = _ln(b, f"{ln}.norm4", f"{lp}.norm4", layer.norm4, b.add(f"{ln}.i2t_res", keys, a, st))
    qq = b.add("dec.final_q", queries, tok, st)
    kk = b.add("dec.final_k", keys, key_pe, st)
    a = _attention(b, "dec.final_attn", f"{p}.final_attn_token_to_image", tr.final_attn_token_to_image, qq, kk, keys)
    queries = _ln(b, "hs", f"{p}.norm_final_attn", tr.norm_final_attn, b.add("dec.final_res", queries, a, st))
    b.host_float = False
    # output upscaling (MaskDecoder.predict_masks, high-res branch)
    up = "sam_mask_decoder.output_upscaling"
    w0 = g.const(f"{up}.0.weight", dec.upscale_conv0[0])
    b0 = g.const(f"{up}.0.bias", dec.upscale_conv0[1])
    x = b.op("dec.up.conv0", "conv_transpose", [keys, w0, b0], (1, 2 * h, 2 * w, c // 4), st, k=2, stride=2)
    x = b.add("dec.up.add_s1", x, s1, st)
    x = b.layernorm("dec.up.norm1", x, f"{up}.1", dec.upscale_norm1[0], dec.upscale_norm1[1], EPS_LAYERNORM2D, st)
    x = b.unary("dec.up.gelu1", "gelu", x, st)
    w3 = g.const(f"{up}.3.weight", dec.upscale_conv3[0])
    b3 = g.const(f"{up}.3.bias", dec.upscale_conv3[1])
    x = b.op("dec.up.conv3", "conv_transpose", [x, w3, b3], (1, 4 * h, 4 * w, c // 8), st, k=2, stride=2)
    x = b.add("dec.up.add_s0", x, s0, st)
    x = b.unary("dec.up.gelu2", "gelu", x, st)
    # host: single-token MLPs on the decoder tokens
    hs = queries
    s = 1 if cfg.pred_obj_scores else 0
    hyper = [_host_mlp(b, f"dec.hyper{i}", f"sam_mask_decoder.output_hypernetworks_mlps.{i}",
                       dec.output_hypernetworks_mlps[i], hs, s + 1 + i) for i in range(dec.num_mask_tokens)]
    iou = _host_mlp(b, "iou_pred", "sam_mask_decoder.iou_prediction_head", dec.iou_prediction_head, hs, s)
    outputs = ["masks", iou, hs]
    if cfg.pred_obj_scores:
        outputs.append(_host_mlp(b, "obj_score", "sam_mask_decoder.pred_obj_score_head", dec.pred_obj_score_head,
                                 hs, 0))
    b.op("masks", "mask_product", [x] + hyper, (1, dec.num_mask_tokens, 4 * h, 4 * w), st, "float32")
    g.outputs = tuple(outputs)
    g.meta.update(num_mask_tokens=dec.num_mask_tokens, obj_token=s,
                  decoder_cfg={k: getattr(cfg, k) for k in cfg.__dataclass_fields__})


def _mask_prompt(b: _Builder, pe, emb: str) -> None:
    """PromptEncoder.mask_downscaling on the fed mask prompt, + the image embedding: the branch that stands
    for `src` when a mask prompt is given (module docstring)."""
    g, st = b.g, "prompt_encoder"
    _, h, w, _ = b.shape(emb)
    b.attrs = {"branch": MASK_INPUT}
    x = b.op("pe.mask_q", "quantize", [b.t(MASK_INPUT, (1, 4 * h, 4 * w, 1), "float32")], (1, 4 * h, 4 * w, 1), st)
    pre = "sam_prompt_encoder.mask_downscaling"
    for i, (conv, norm) in ((0, (pe.mask_conv0, pe.mask_norm1)), (3, (pe.mask_conv3, pe.mask_norm4))):
        cw, cb = conv
        _, hh, ww, _ = b.shape(x)
        x = b.op(f"pe.mask.conv{i}", "conv", [x, g.const(f"{pre}.{i}.weight", cw), g.const(f"{pre}.{i}.bias", cb)],
                 (1, hh // 2, ww // 2, cw.shape[0]), st, k=2, stride=2, padding=0)
        x = b.layernorm(f"pe.mask.norm{i + 1}", x, f"{pre}.{i + 1}", *norm, EPS_LAYERNORM2D, st)
        x = b.unary(f"pe.mask.gelu{i + 2}", "gelu", x, st)
    x = b.linear("pe.mask.conv6", x, f"{pre}.6.weight", pe.mask_conv6[0], f"{pre}.6.bias", pe.mask_conv6[1], st)
    b.op("src.mask", "add", [emb, x], b.shape(emb), "mask_decoder", replaces="src")
    b.attrs = {}


def missing_mask_path(graph: Graph) -> list[str]:
    """The mask prompt's tensors and weights `graph` lacks (empty when mask prompts can run)."""
    pre = "sam_prompt_encoder.mask_downscaling"
    consts = [f"{pre}.{i}.{k}" for i in (0, 1, 3, 4, 6) for k in ("weight", "bias")]
    return [t for t in MASK_TENSORS if t not in graph.tensors] + [c for c in consts if c not in graph.constants]


def require_mask_path(graph: Graph, what: str = "the int8 model", missing: list[str] | None = None) -> None:
    """PromptError naming what `graph` lacks for mask prompts (missing_mask_path, or the caller's fuller list)."""
    from golden_model.predictor import PromptError
    missing = missing_mask_path(graph) if missing is None else missing
    if missing:
        raise PromptError(f"{what} has no mask prompt path (written before it existed): missing "
                          f"{', '.join(missing)}; re-run `sam2fpga quantize` for mask prompts and corrections")


def _ln(b, name, key, mod, x):
    return b.layernorm(name, x, key, mod.weight, mod.bias, mod.eps, "mask_decoder")


def _attention(b: _Builder, n: str, p: str, mod, q_in, k_in, v_in) -> str:
    """transformer.Attention: q/k/v projections, multi-head SDPA, out projection. Projections of host
    (token) tensors run on the host; attention between tokens and the image runs on the attention engine
    (the token side quantised into it), and its out projection runs where its queries came from."""
    st = "mask_decoder"
    q = b.linear(f"{n}.q", q_in, f"{p}.q_proj.weight", mod.q_proj.weight, f"{p}.q_proj.bias", mod.q_proj.bias, st)
    k = b.linear(f"{n}.k", k_in, f"{p}.k_proj.weight", mod.k_proj.weight, f"{p}.k_proj.bias", mod.k_proj.bias, st)
    v = b.linear(f"{n}.v", v_in, f"{p}.v_proj.weight", mod.v_proj.weight, f"{p}.v_proj.bias", mod.v_proj.bias, st)
    if not b.on_host(q, k, v):
        q, k, v = (b.to_int8(x, st) for x in (q, k, v))
    a = b.host_or_int(f"{n}.sdpa", "attention", [q, k, v], b.shape(q), st, heads=mod.num_heads)
    if b.on_host(q_in):
        a = b.to_float(a, st)
    return b.linear(f"{n}.out", a, f"{p}.out_proj.weight", mod.out_proj.weight, f"{p}.out_proj.bias",
                    mod.out_proj.bias, st)


def _host_mlp(b: _Builder, name: str, p: str, mod, hs: str, row: int) -> str:
    """sam2_utils.MLP on token `row` of hs (host, float): ReLU between layers, optional sigmoid."""
    layers = getattr(mod, "layers", [mod])
    ins = [hs]
    for i, lin in enumerate(layers):
        ins += [b.g.const(f"{p}.layers.{i}.weight" if hasattr(mod, "layers") else f"{p}.weight", lin.weight),
                b.g.const(f"{p}.layers.{i}.bias" if hasattr(mod, "layers") else f"{p}.bias", lin.bias)]
    out_dim = layers[-1].weight.shape[0]
    return b.op(name, "mlp", ins, (1, out_dim), "mask_decoder", "float32", row=row,
                sigmoid=bool(getattr(mod, "sigmoid_output", False)))


def random_model(name: str = "tiny", image_size: int | None = None, seed: int = 0):
    """A SAM2Model on seeded random weights, optionally at a reduced input size (a multiple of 128: the
    stride-4 grid must tile Hiera's window embedding), for tests and scaled-down runs."""
    from dataclasses import replace
    from types import MappingProxyType

    from golden_model.config import load_config
    from golden_model.model import SAM2Model
    cfg = load_config(name)
    if image_size is not None:
        if image_size % 128 or image_size < 128:
            raise ValueError(f"image size {image_size} must be a positive multiple of 128")
        cfg = replace(cfg, options=MappingProxyType({**cfg.options, "image_size": image_size}))
    return SAM2Model(name, seed=seed, config=cfg)
