"""The int8 graph on the overlay (sw.runtime.graph_exec): a scaled-down tiny SAM 2 (128 px, seeded random
weights) runs image encoder, prompt encoder and mask decoder node by node on the sim backend, every node
where the preset's placement puts it, and every node's output equals the integer interpreter's."""
import numpy as np
import pytest

from golden_model.quant.builder import build_graph, random_model
from golden_model.quant.intinterp import IntRunner
from golden_model.quant.predictor import GraphPredictor
from golden_model.quant.quantize import calibrate, quantize
from hw.config import preset
from sw.runtime.graph_exec import GraphExecError, GraphExecutor

SIZE = 128
STAGES = ("image_encoder", "prompt_encoder", "mask_decoder")
CLICK = (60.0, 70.0)


@pytest.fixture(scope="module")
def scaled():
    graph = build_graph(random_model("tiny", SIZE, seed=0))
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return graph, calibrate(graph, [image], prompts_per_image=1), image


def _quantised(scaled, cfg):
    graph, stats, _ = scaled
    return quantize(graph, stats, key_tile=cfg.cols, preset=cfg.name)


def test_sim_every_node_bit_exact_with_intinterp(scaled):
    """The sim preset: its placement puts many linears on the host (a 4 x 8 array), the rest on every engine."""
    cfg = preset("sim")
    qm = _quantised(scaled, cfg)
    feeds = {"image": GraphPredictor(qm.graph, IntRunner(qm)).image_input(scaled[2]),
             "point_coords": np.array([[CLICK]], np.float32), "point_labels": np.ones((1, 1), np.float32)}
    ref = IntRunner(qm).run(feeds, stages=STAGES)
    ex = GraphExecutor(qm, cfg, "sim")
    assert ex.check(ex.run(feeds, stages=STAGES), ref) == []
    recs = list(ex.records.values())
    assert len(recs) == sum(n.stage in STAGES for n in qm.graph.nodes)
    on_engine = [r for r in recs if r.where not in ("host", "layout")]
    assert {r.where for r in on_engine} == {"gemm", "conv", "attention", "vector"}
    assert all(r.cycles > 0 and r.calls > 0 for r in on_engine)


def test_bench16_segment_equals_int8_host_node_by_node(scaled):
    """bench16 places every engine op kind of the image path on the overlay; the predictor on the executor
    gives the `--precision int8` masks, scores and logits bit for bit, and every node equals intinterp's."""
    cfg = preset("bench16")
    qm = _quantised(scaled, cfg)
    ex = GraphExecutor(qm, cfg, "sim")
    envs, outs = [], []
    for runner in (IntRunner(qm), ex):
        p = GraphPredictor(qm.graph, runner)
        p.set_image(scaled[2])
        envs.append(p.decode_click(CLICK))
        outs.append(p.predict(point_coords=np.array([CLICK], np.float32), point_labels=np.array([1])))
    assert ex.check(envs[1], envs[0]) == []
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    on_engine = {r.op for r in ex.records.values() if r.where not in ("host", "layout") and r.cycles > 0}
    assert on_engine >= {"linear", "conv", "conv_transpose", "mask_product", "attention", "layernorm", "gelu",
                         "add", "maxpool2x2", "upsample2x"}


def test_key_tile_of_another_preset_is_refused(scaled):
    with pytest.raises(GraphExecError, match="key tile 16.*'sim'.* 8"):
        GraphExecutor(_quantised(scaled, preset("bench16")), preset("sim"))
