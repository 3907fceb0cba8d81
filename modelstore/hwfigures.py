"""Hardware figures derived from a version: params, size, flops, mem_infer, cpu_ghz_min.

The counting rules per operator, the activation-memory estimate and the CPU formula are
documented in docs/HARDWARE.md; this module is their only implementation. Everything works
on a normalized graph (modelstore.graph), so no onnx is needed here.

* ``flops``: operations per inference (one sample: symbolic dims such as a batch count 1),
  a multiply-add counting ONE operation (so Gemm M×K·K×N = M·N·K), any other arithmetic
  operation (add, compare, exp ...) counting one.
* ``mem_infer`` = weight bytes + peak activation bytes (tensors live at once when nodes run
  in graph order, each tensor freed after its last reader).
* ``cpu_ghz_min`` = flops / (budget_s × ops_per_cycle × 1e9): the clock that runs one
  inference within ``budget_s`` seconds doing ``ops_per_cycle`` operations per cycle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from modelstore.errors import InvalidInputError
from modelstore.graph import ITEMSIZE

DEFAULT_BUDGET_S = 1.0  # one inference per second
DEFAULT_OPS_PER_CYCLE = 1.0  # a scalar core; a SIMD core sustains more (see docs/HARDWARE.md)
BUDGET_KEY = "latency_budget_s"  # commit --meta keys that override the defaults
OPS_KEY = "ops_per_cycle"

ZERO_COST = frozenset(["Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "Shape", "Size", "Identity", "Cast", "CastLike", "Constant", "ConstantOfShape", "Dropout", "Expand", "Tile", "Pad", "DepthToSpace", "SpaceToDepth", "Range", "NonZero", "ScatterND", "ScatterElements", "Scatter", "OneHot", "EyeLike", "Optional", "OptionalGetElement", "OptionalHasElement", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceLength", "SplitToSequence", "ConcatFromSequence", "Trilu", "Compress", "ReverseSequence", "Unique", "TopK"])
ELEMENTWISE = frozenset(["Add", "Sub", "Mul", "Div", "Pow", "Mod", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Erf", "Gelu", "Softplus", "Softsign", "Mish", "Clip", "Floor", "Ceil", "Round", "Sign", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "Where", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "IsNaN", "IsInf", "Shrink", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "FastGelu", "QuickGelu", "BiasGelu", "Resize", "Upsample"])
VARIADIC = frozenset(["Sum", "Max", "Min", "Mean"])
REDUCE = frozenset(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "CumSum"])
POOL = frozenset(["MaxPool", "AveragePool", "LpPool"])
GLOBAL_POOL = frozenset(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
NORM5 = frozenset(["LayerNormalization", "InstanceNormalization", "GroupNormalization", "SkipLayerNormalization"])


class _Unknown(Exception):
    """A shape the rule needs is not known."""


class _Shapes:
    def __init__(self, graph: dict):
        self.vi = graph.get("value_info") or {}

    def shape(self, name: str) -> list[int]:
        """Concrete dims (symbolic dims count 1: one sample per inference)."""
        s = (self.vi.get(name) or {}).get("shape") if name else None
        if s is None or any(d is None for d in s):
            raise _Unknown(name)
        return [1 if isinstance(d, str) or d < 0 else int(d) for d in s]

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def nbytes(self, name: str) -> int:
        dtype = (self.vi.get(name) or {}).get("dtype")
        return self.numel(name) * ITEMSIZE.get(dtype, 4)


def node_flops(node: dict, sh: _Shapes) -> int | None:
    """Operations of one node by the rules of docs/HARDWARE.md; None for an op without a rule.

    Raises _Unknown when a shape the rule needs is not known.
    """
    op, ins, outs, at = node["op_type"], node["inputs"], node["outputs"], node["attributes"]
    has = lambda i: len(ins) > i and ins[i] != ""
    if op in ZERO_COST:
        return 0
    if op == "Conv" or op == "ConvInteger" or op == "QLinearConv":
        w = 3 if op == "QLinearConv" else 1
        y = sh.numel(outs[0])
        return y * math.prod(sh.shape(ins[w])[1:]) + (y if op == "Conv" and has(2) else 0)
    if op == "ConvTranspose":
        return sh.numel(ins[0]) * math.prod(sh.shape(ins[1])[1:]) + (sh.numel(outs[0]) if has(2) else 0)
    if op == "Gemm":
        a = sh.shape(ins[0])
        k = a[0] if at.get("transA", 0) else a[-1]
        y = sh.numel(outs[0])
        return y * k + (y if has(2) else 0)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
        a = sh.shape(ins[0])
        k = a[-1] if op != "FusedMatMul" or not at.get("transA", 0) else a[-2]
        return sh.numel(outs[0]) * k
    if op == "Attention" and node.get("domain", "") in ("", "ai.onnx"):
        return _onnx_attention(ins, at, sh)
    if op in ("Attention", "MultiHeadAttention") and node.get("domain") == "com.microsoft":
        return _ms_attention(op, ins, at, sh)
    if op == "BatchNormalization":
        return sh.numel(outs[0])  # folded to one multiply-add per element at inference
    if op in NORM5:
        return 5 * sh.numel(outs[0])
    if op in ("RMSNormalization", "SimplifiedLayerNormalization"):
        return 3 * sh.numel(outs[0])
    if op == "LRN":
        return sh.numel(outs[0]) * int(at.get("size", 1))
    if op in POOL:
        return sh.numel(outs[0]) * math.prod(at.get("kernel_shape") or [1])
    if op in GLOBAL_POOL or op in REDUCE:
        return sh.numel(ins[0])
    if op in ("Softmax", "LogSoftmax"):
        return 3 * sh.numel(outs[0])
    if op in VARIADIC:
        return max(1, sum(1 for x in ins if x) - 1) * sh.numel(outs[0])
    if op in ELEMENTWISE:
        return sh.numel(outs[0])
    if op in ("LSTM", "GRU", "RNN"):
        x = sh.shape(ins[0])
        return x[0] * x[1] * (sh.numel(ins[1]) + sh.numel(ins[2]))  # (seq·batch either layout) × W and R
    return None


def _onnx_attention(ins, at, sh: _Shapes) -> int:
    """ONNX Attention (opset 23): Q·Kᵀ and softmax·V, per head; 4-D (B,H,S,D) or 3-D (B,S,H·D)."""
    q, k, v = sh.shape(ins[0]), sh.shape(ins[1]), sh.shape(ins[2])
    if len(q) == 4:
        b, hq, sq, d = q
        skv, dv = k[2], v[3]
    else:
        b, sq, hidden_q = q
        hq = int(at.get("q_num_heads", 1))
        hkv = int(at.get("kv_num_heads", hq))
        skv, d, dv = k[1], hidden_q // hq, v[2] // hkv
    scores = b * hq * sq * skv
    return scores * d + scores * dv + 3 * scores


def _ms_attention(op, ins, at, sh: _Shapes) -> int:
    """com.microsoft Attention (with its packed QKV projection) and MultiHeadAttention."""
    heads = int(at.get("num_heads", 1))
    if op == "Attention":
        x, w = sh.shape(ins[0]), sh.shape(ins[1])
        b, s, hidden = x[0], x[1], w[1] // 3
        proj = b * s * x[2] * w[1] + (b * s * w[1] if len(ins) > 2 and ins[2] else 0)
        skv = s
    else:
        q, k = sh.shape(ins[0]), sh.shape(ins[1])
        b, s, hidden = q
        skv = k[1] if len(k) == 3 else k[2]
        proj = 0
    return proj + 2 * b * s * skv * hidden + 3 * b * heads * s * skv


def _order(graph: dict) -> list[dict]:
    """Nodes in a topological order (the file's order when it already is one)."""
    nodes = graph["nodes"]
    known = {x["name"] for x in graph.get("inputs") or []} | set(graph.get("initializers") or {}) | {""}
    produced_by = {o: i for i, n in enumerate(nodes) for o in n["outputs"]}
    done, out, seen = set(known), [], set()
    ok = True
    for n in nodes:
        if any(x not in done and x in produced_by for x in n["inputs"]):
            ok = False
            break
        done.update(n["outputs"])
    if ok:
        return list(nodes)
    indeg = {i: sum(1 for x in n["inputs"] if x in produced_by and produced_by[x] != i)
             for i, n in enumerate(nodes)}
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in n["inputs"]:
            if x in produced_by and produced_by[x] != i:
                users.setdefault(produced_by[x], []).append(i)
    ready = [i for i, d in indeg.items() if d == 0]
    while ready:
        i = ready.pop(0)
        if i in seen:
            continue
        seen.add(i)
        out.append(nodes[i])
        for u in users.get(i, []):
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    out.extend(n for i, n in enumerate(nodes) if i not in seen)  # a cycle: keep the rest in file order
    return out


def activation_peak(graph: dict, nodes: list[dict] | None = None) -> tuple[int | None, int]:
    """(peak bytes of activations live at once, number of activations of unknown size).

    A graph input is live from the start, a node output from its node; each lives until its
    last reader ran (a graph output until the end). At node i the live set includes i's
    inputs and outputs. The peak is None when some activation's size is unknown.
    """
    sh = _Shapes(graph)
    nodes = _order(graph) if nodes is None else nodes
    weights = set(graph.get("initializers") or {})
    end = len(nodes)
    birth: dict[str, int] = {x["name"]: 0 for x in graph.get("inputs") or [] if x["name"] not in weights}
    for i, n in enumerate(nodes):
        for o in n["outputs"]:
            if o:
                birth.setdefault(o, i)
    last = dict(birth)
    for i, n in enumerate(nodes):
        for x in n["inputs"]:
            if x in last:
                last[x] = max(last[x], i)
    for x in graph.get("outputs") or []:
        if x["name"] in last:
            last[x["name"]] = end
    delta = [0] * (end + 2)
    unknown = 0
    for name, b in birth.items():
        try:
            size = sh.nbytes(name)
        except _Unknown:
            unknown += 1
            continue
        delta[b] += size
        delta[last[name] + 1] -= size
    peak = cur = 0
    for d in delta:
        cur += d
        peak = max(peak, cur)
    return (None if unknown else peak), unknown


def check_budget(budget_s, ops_per_cycle) -> tuple[float, float]:
    out = []
    for name, v in (("latency budget (s)", budget_s), ("ops per cycle", ops_per_cycle)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidInputError(f"{name} must be a number > 0, got {v!r}") from None
        if not math.isfinite(f) or f <= 0:
            raise InvalidInputError(f"{name} must be a number > 0, got {v!r}")
        out.append(f)
    return out[0], out[1]


def cpu_ghz_min(flops: int, budget_s: float = DEFAULT_BUDGET_S, ops_per_cycle: float = DEFAULT_OPS_PER_CYCLE) -> float:
    """The clock (GHz) at which `flops` operations take `budget_s` seconds at `ops_per_cycle`."""
    budget_s, ops_per_cycle = check_budget(budget_s, ops_per_cycle)
    return flops / (budget_s * ops_per_cycle * 1e9)


def weights_of(tensors: Iterable) -> tuple[int, int]:
    """(params, size): Σ numel and Σ bytes over tensors (anything with .shape and .nbytes),
    the same definitions as the built-in `params` and `size` of the catalog."""
    params = size = 0
    for t in tensors:
        params += math.prod(t.shape)
        size += int(t.nbytes)
    return params, size


def figures(graph: dict | None, *, params: int | None = None, size: int | None = None,
            budget_s: float = DEFAULT_BUDGET_S, ops_per_cycle: float = DEFAULT_OPS_PER_CYCLE) -> dict:
    """All figures of a version: params and size as given (or from the graph's initializers),
    flops / mem_infer / cpu_ghz_min when the graph gives every needed shape (else None),
    plus what was not counted: ``unknown_ops`` (op -> count, no rule: counted 0) and
    ``nodes_without_shapes``; ``per_op`` sums flops by op type."""
    budget_s, ops_per_cycle = check_budget(budget_s, ops_per_cycle)
    out = {"params": params, "size": size, "flops": None, "mem_infer": None, "activation_peak": None,
           "cpu_ghz_min": None, "latency_budget_s": budget_s, "ops_per_cycle": ops_per_cycle}
    if graph is None:
        return out
    sh = _Shapes(graph)
    if params is None or size is None:
        p = s = 0
        for name, shape in (graph.get("initializers") or {}).items():
            n = math.prod(1 if isinstance(d, str) or d is None else d for d in (shape or []))
            p += n
            s += n * ITEMSIZE.get((graph["value_info"].get(name) or {}).get("dtype"), 4)
        out["params"] = p if params is None else params
        out["size"] = s if size is None else size
    nodes = _order(graph)
    total, per_op, unknown_ops, missing = 0, {}, {}, []
    for n in nodes:
        try:
            f = node_flops(n, sh)
        except _Unknown:
            missing.append(n["name"] or n["op_type"])
            continue
        except (IndexError, ValueError, TypeError, ZeroDivisionError, KeyError):
            missing.append(n["name"] or n["op_type"])  # a malformed node: its rule cannot apply
            continue
        if f is None:
            unknown_ops[n["op_type"]] = unknown_ops.get(n["op_type"], 0) + 1
            continue
        total += f
        per_op[n["op_type"]] = per_op.get(n["op_type"], 0) + f
    out.update(unknown_ops=unknown_ops, nodes_without_shapes=len(missing), per_op=per_op)
    if not missing:
        out["flops"] = total
        out["cpu_ghz_min"] = total / (budget_s * ops_per_cycle * 1e9)
    peak, _unknown = activation_peak(graph, nodes)
    out["activation_peak"] = peak
    if peak is not None and out["size"] is not None:
        out["mem_infer"] = out["size"] + peak
    return out


def commit_attributes(fig: dict, user_meta: dict) -> dict:
    """The attributes a commit records from `fig` (flops, mem_infer, cpu_ghz_min and the
    budget they assume); keys the user gave at commit are left to the user."""
    out = {}
    for k in ("flops", "mem_infer", "cpu_ghz_min"):
        v = fig.get(k)
        if v is None or k in user_meta:
            continue
        out[k] = float(v) if k == "cpu_ghz_min" else (int(v) if v <= 2**53 else float(v))
    if fig.get("cpu_ghz_min") is not None:
        for k in (BUDGET_KEY, OPS_KEY):
            if k not in user_meta:
                out[k] = fig[k]
    return out


def budget_from_meta(meta: dict | None) -> tuple[float, float]:
    """(budget_s, ops_per_cycle) from commit metadata keys, else the defaults."""
    meta = meta or {}
    return check_budget(meta.get(BUDGET_KEY, DEFAULT_BUDGET_S), meta.get(OPS_KEY, DEFAULT_OPS_PER_CYCLE))
