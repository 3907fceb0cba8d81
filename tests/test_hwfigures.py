"""Derived hardware figures (docs/HARDWARE.md): flops of a small CNN and an MLP against hand
counts, mem_infer and cpu_ghz_min against their formulas, and a committed ONNX version
queryable by them."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper

from modelstore import graph as graphs
from modelstore import hwfigures
from modelstore.errors import InvalidInputError


def _init(name, shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def mlp():
    """x[N,784] -> Gemm(256) -> Relu -> Gemm(10) -> Softmax."""
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["r1"], name="act1"),
        helper.make_node("Gemm", ["r1", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    inits = [_init("fc1.weight", (256, 784)), _init("fc1.bias", (256,)), _init("fc2.weight", (10, 256)),
             _init("fc2.bias", (10,))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def cnn():
    """x[1,3,32,32] -> Conv3x3(8)+b -> BN -> Relu -> MaxPool2 -> Conv3x3(16) -> Relu -> GAP -> Flatten -> Gemm(10)."""
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.s", "bn.b", "bn.m", "bn.v"], ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2.w"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    inits = [_init("c1.w", (8, 3, 3, 3)), _init("c1.b", (8,)), _init("bn.s", (8,)), _init("bn.b", (8,)),
             _init("bn.m", (8,)), numpy_helper.from_array(np.ones(8, np.float32), "bn.v"),
             _init("c2.w", (16, 8, 3, 3)), _init("fc.w", (10, 16)), _init("fc.b", (10,))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


# Hand counts (docs/HARDWARE.md: a multiply-add is one operation; a bias add, an activation, a
# pooled element, a BatchNorm element one each; Softmax 3 per element).
MLP_FLOPS = (
    256 * 784 + 256  # fc1: M·N·K + bias
    + 256  # relu
    + 10 * 256 + 10  # fc2
    + 3 * 10  # softmax
)
CNN_FLOPS = (
    (8 * 32 * 32) * (3 * 3 * 3) + 8 * 32 * 32  # conv1: out elems × (C_in·kh·kw) + bias
    + 8 * 32 * 32  # batchnorm (one folded multiply-add per element)
    + 8 * 32 * 32  # relu1
    + (8 * 16 * 16) * (2 * 2)  # maxpool: out elems × window
    + (16 * 16 * 16) * (8 * 3 * 3)  # conv2, no bias
    + 16 * 16 * 16  # relu2
    + 16 * 16 * 16  # global average pool: input elems
    + 0  # flatten
    + 10 * 16 + 10  # fc
)


def test_mlp_flops_match_hand_count():
    g = graphs.from_onnx(mlp())
    fig = hwfigures.figures(g)
    assert MLP_FLOPS == 203_816
    assert fig["flops"] == MLP_FLOPS
    assert fig["per_op"] == {"Gemm": 200_960 + 2_570, "Relu": 256, "Softmax": 30}
    assert fig["unknown_ops"] == {} and fig["nodes_without_shapes"] == 0
    assert fig["params"] == 256 * 784 + 256 + 2560 + 10


def test_cnn_flops_match_hand_count():
    g = graphs.from_onnx(cnn())
    fig = hwfigures.figures(g)
    assert CNN_FLOPS == 557_226
    assert fig["flops"] == CNN_FLOPS
    assert fig["per_op"]["Conv"] == 229_376 + 294_912
    assert fig["per_op"]["Flatten"] == 0


def test_mem_infer_and_cpu_ghz_min_follow_the_formulas():
    g = graphs.from_onnx(mlp())
    size = (256 * 784 + 256 + 2560 + 10) * 4
    # Live activations (F32, batch 1): at fc1 x + h1 = 784·4 + 256·4 = 4160 bytes is the peak
    # (then h1 + r1 = 2048, r1 + logits = 1064, logits + y = 80).
    assert hwfigures.activation_peak(g) == (4160, 0)
    fig = hwfigures.figures(g, budget_s=0.01, ops_per_cycle=4)
    assert fig["size"] == size
    assert fig["mem_infer"] == size + 4160
    assert fig["cpu_ghz_min"] == pytest.approx(MLP_FLOPS / (0.01 * 4 * 1e9))
    default = hwfigures.figures(g)
    assert default["cpu_ghz_min"] == pytest.approx(MLP_FLOPS / 1e9)  # 1 s, 1 op/cycle
    assert hwfigures.cpu_ghz_min(2e9, 0.5, 2) == pytest.approx(2.0)
    with pytest.raises(InvalidInputError):
        hwfigures.figures(g, budget_s=0)
    with pytest.raises(InvalidInputError):
        hwfigures.cpu_ghz_min(1e9, ops_per_cycle="fast")


def test_skip_connection_keeps_its_tensor_live():
    """x feeds the first and the last node: it stays live across the whole graph."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Add", ["b", "x"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1000])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [])
    g = graphs.from_onnx(m)
    assert hwfigures.activation_peak(g) == (4000 * 3, 0)  # x, b and y (or x, a, b) at once
    assert hwfigures.figures(g)["flops"] == 3000


def test_matmul_attention_and_unknown_ops():
    """MatMul pairs of an attention block count B·H·S·S·D each; an op without a rule is listed, not guessed."""
    b, h, s, d = 1, 2, 8, 4
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"]),
             helper.make_node("Det", ["m"], ["det"])]
    vi = lambda n, shape: helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
    m = _model(nodes, [vi("q", [b, h, s, d]), vi("k", [b, h, s, d]), vi("v", [b, h, s, d]), vi("m", [3, 3])],
               [vi("o", None), vi("det", None)], [])
    fig = hwfigures.figures(graphs.from_onnx(m))
    assert fig["per_op"]["MatMul"] == 2 * b * h * s * s * d
    assert fig["per_op"]["Softmax"] == 3 * b * h * s * s
    assert fig["unknown_ops"] == {"Det": 1}
    assert fig["flops"] == 2 * b * h * s * s * d + 3 * b * h * s * s


def test_onnx_attention_op():
    """ONNX Attention (opset 23), 4-D: Q·Kᵀ and P·V (B·H·Sq·Skv·D each) plus softmax (3 per score)."""
    g = {"nodes": [{"name": "att", "op_type": "Attention", "inputs": ["q", "k", "v"], "outputs": ["o"],
                    "attributes": {}}],
         "inputs": [{"name": n, "shape": [2, 4, 16, 8], "dtype": "F32"} for n in ("q", "k", "v")],
         "outputs": [{"name": "o", "shape": [2, 4, 16, 8], "dtype": "F32"}]}
    fig = hwfigures.figures(graphs.from_dict(g, infer=False))
    scores = 2 * 4 * 16 * 16
    assert fig["flops"] == scores * 8 * 2 + 3 * scores


def test_unknown_shape_gives_no_flops():
    g = {"nodes": [{"name": "mm", "op_type": "MatMul", "inputs": ["a", "b"], "outputs": ["c"], "attributes": {}}],
         "inputs": [{"name": "a", "shape": None, "dtype": "F32"}, {"name": "b", "shape": [4, 4], "dtype": "F32"}],
         "outputs": [{"name": "c", "shape": None, "dtype": "F32"}]}
    fig = hwfigures.figures(graphs.from_dict(g, infer=False))
    assert fig["flops"] is None and fig["cpu_ghz_min"] is None and fig["mem_infer"] is None
    assert fig["nodes_without_shapes"] == 1


def _write(model, path):
    onnx.save(model, str(path))
    return path


def _store(tmp_path):
    from modelstore.store import Store

    return Store.init(tmp_path / "store")


def _onnx_reader_wired(path) -> bool:
    from modelstore.errors import ModelstoreError
    from modelstore.formats import detect_format

    try:
        return detect_format(path) == "onnx"
    except ModelstoreError:
        return False


def test_committed_onnx_version_is_queryable_by_figures(tmp_path):
    path = _write(mlp(), tmp_path / "mlp.onnx")
    if not _onnx_reader_wired(path):
        pytest.skip("the ONNX reader is not wired into formats.open_model yet")
    s = _store(tmp_path)
    with s:
        a = s.commit(path, model="mlp")
        c = s.commit(_write(cnn(), tmp_path / "cnn.onnx"), model="cnn", meta={"latency_budget_s": "0.0001"})
        s.commit({"w": np.zeros((4, 4), np.float32)}, model="plain")
        assert a.meta["flops"] == MLP_FLOPS
        assert a.meta["mem_infer"] == a.size + 4160
        assert a.meta["cpu_ghz_min"] == pytest.approx(MLP_FLOPS / 1e9)
        assert a.meta["latency_budget_s"] == 1 and a.meta["ops_per_cycle"] == 1
        assert c.meta["cpu_ghz_min"] == pytest.approx(CNN_FLOPS / (0.0001 * 1e9))
        assert [v.ref for v in s.query("flops < 1e9 and cpu_ghz_min <= 1")] == ["mlp@1"]
        assert [v.ref for v in s.query("flops > 500000 order by flops")] == ["cnn@1"]
        assert sorted(v.ref for v in s.query("mem_infer < 1MB and params > 1000")) == ["cnn@1", "mlp@1"]
        assert "flops" not in s.resolve("plain").meta  # no graph, no flops; params/size are built-ins
        assert s.resolve("plain").params == 16


def test_torch_exported_cnn_with_dynamic_batch(tmp_path):
    """A real exporter's graph (shape arithmetic Shape->Gather->Concat->Reshape, a symbolic
    batch): counted per sample, matching the hand count."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
            self.fc = nn.Linear(16 * 8 * 8, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
            return self.fc(x.view(x.shape[0], -1))

    path = tmp_path / "net.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), torch.zeros(2, 3, 32, 32), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    g = graphs.load_onnx_graph(path)
    assert g["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    hand = ((8 * 32 * 32) * 27 + 8 * 32 * 32  # conv1 + bias
            + 8 * 32 * 32 + (8 * 16 * 16) * 4  # relu, maxpool 2x2
            + (16 * 16 * 16) * 72  # conv2
            + 16 * 16 * 16 + (16 * 8 * 8) * 4  # relu, maxpool
            + 10 * 1024 + 10)  # fc
    fig = hwfigures.figures(g)
    assert fig["flops"] == hand == 559_114
    assert fig["params"] == 8 * 27 + 8 + 16 * 72 + 10 * 1024 + 10
