"""The int8 SAM 2 graph: structure, serialisation, and its float interpretation == the golden float model."""
import numpy as np
import pytest

from golden_model.predictor import ImagePredictor
from golden_model.quant.builder import MASK_INPUT, build_graph, random_model
from golden_model.quant.graph import ENGINE, Graph, GraphError
from golden_model.quant.interpret import FloatRunner
from golden_model.quant.predictor import GraphPredictor

SIZE = 256   # reduced input: every stage, padded windows (16 x 16 grid in 14 x 14 windows) included


@pytest.fixture(scope="module")
def model():
    return random_model("tiny", SIZE, seed=0)


@pytest.fixture(scope="module")
def graph(model):
    return build_graph(model)


def test_every_node_has_an_engine_and_defined_tensors(graph):
    engines = {n.engine for n in graph.nodes}
    assert engines == {"gemm", "conv", "attention", "vector", "layout", "host"}
    produced = set(graph.inputs) | {"point_coords", "point_labels", MASK_INPUT}   # fed by the host
    for n in graph.nodes:
        assert all(i in produced or i in graph.constants for i in n.inputs), n.name
        produced.update(n.outputs)
    # every Hiera block has one attention node, and the padded stage-3 windows are there (16 -> 28 = 2 x 14)
    assert sum(n.op == "attention" and n.stage == "image_encoder" for n in graph.nodes) == 12
    assert graph.tensors["enc.blocks.4.window"].shape == (4, 14, 14, 384)


def test_summary_lists_nodes_with_macs(graph):
    text = graph.summary()
    assert "enc.blocks.0.mlp.fc1" in text and "gemm" in text
    fc1 = graph.node("enc.blocks.0.mlp.fc1")
    assert graph.macs(fc1) == (SIZE // 4) ** 2 * 96 * 384
    assert graph.macs(graph.node("enc.blocks.0.attn.sdpa")) == 2 * 64 * 64 * 64 * 96   # 64 windows of 8 x 8


def test_json_round_trip(graph):
    g2 = Graph.from_json(graph.to_json(), graph.constants)
    assert [n.name for n in g2.nodes] == [n.name for n in graph.nodes]
    assert g2.nodes[5] == graph.nodes[5] and g2.tensors == graph.tensors and g2.meta == graph.meta
    with pytest.raises(GraphError, match="constants missing"):
        Graph.from_json(graph.to_json(), {})


def test_unknown_op_and_undefined_input_rejected():
    g = Graph("tiny", 128)
    g.tensor("x", (1, 4))
    with pytest.raises(GraphError, match="unknown op"):
        g.add("n", "softmax", ["x"], [], "image_encoder")
    with pytest.raises(GraphError, match="not defined"):
        g.add("n", "gelu", ["y"], [], "image_encoder")
    assert set(ENGINE.values()) >= {"gemm", "conv", "depthwise", "attention", "vector", "host"}


def test_float_graph_equals_golden_model(model, graph):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (180, 250, 3), dtype=np.uint8)
    ref = ImagePredictor(model)
    ref.set_image(image)
    ours = GraphPredictor(graph, FloatRunner(graph))
    ours.set_image(image)
    prev = ref.predict(point_coords=[[100, 50]], point_labels=[1], return_logits=True)[2][:1]   # a mask prompt
    for pts, labels, box, mask in (([[100, 50]], [1], None, None), ([[10, 10], [200, 150]], [1, 0], None, None),
                                   (None, None, [20, 30, 180, 160], None), ([[100, 50]], [1], None, prev),
                                   (None, None, None, prev)):
        want = ref.predict(point_coords=pts, point_labels=labels, box=box, mask_input=mask, return_logits=True)
        got = ours.predict(point_coords=pts, point_labels=labels, box=box, mask_input=mask, return_logits=True)
        for w, g in zip(want, got):
            assert w.shape == g.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
