"""TFLite models for anomaly detection: runtime loading, the model spec, building models without
TensorFlow, and a numpy reference.

Invariants:
- The ML runtime is optional (extra ``ml``). ``load_interpreter_class()`` prefers
  ``ai_edge_litert.interpreter.Interpreter`` and falls back to ``tflite_runtime.interpreter``;
  nothing here imports numpy or a runtime at module import time, so ``edgegw check`` can report a
  missing runtime as a config issue instead of an ImportError.
- A model consumes one flattened window in time-major order: for ``window`` rows of
  ``features`` values, ``x = [r0f0, r0f1, ..., r1f0, ...]``. Input shapes ``[1, W*F]`` and
  ``[1, W, F]`` are both accepted.
- ``output: reconstruction`` models (autoencoders) return the reconstructed window in raw units;
  the score is the mean squared reconstruction error, normalised per feature by the spec's
  ``residual_scale`` (else ``scaling.std``). ``output: score`` models return the score
  directly (shape ``[1, 1]`` or ``[1]``).
- A ``ModelSpec`` JSON file lives beside the ``.tflite`` (same stem, ``.json``).
- ``input_offset`` (fitted models): per-feature values subtracted in float64 before the window
  goes to the float32 model, so a sensor at 1e9 +- 1 keeps its variation; the reconstruction is
  compared with the offset window.
- Interpreters use the builtin op resolver without default delegates: the XNNPACK delegate is
  no faster for these small dense models and prints an INFO line on stderr at every load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np  # lazy: optional extra [ml]
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.floating[Any]]


class RuntimeMissingError(RuntimeError):
    """No TFLite runtime is importable (install ``edgegw[ml]``)."""


class ModelShapeError(ValueError):
    """The model's tensors do not fit the declared window x features."""


# --------------------------------------------------------------------------- runtime
def load_interpreter_class() -> tuple[Any, str]:
    """The Interpreter class of the first available runtime and its name.

    Raises ``RuntimeMissingError`` with an actionable message when none is installed or usable.
    """
    errors: list[str] = []
    try:
        from ai_edge_litert.interpreter import Interpreter  # lazy: optional extra [ml]

        return Interpreter, "ai-edge-litert"
    except ImportError as exc:
        errors.append(f"ai_edge_litert: {exc}")
    try:
        from tflite_runtime.interpreter import Interpreter  # lazy: optional extra [ml]

        return Interpreter, "tflite-runtime"
    except ImportError as exc:
        errors.append(f"tflite_runtime: {exc}")
    raise RuntimeMissingError("no TFLite runtime is installed (" + "; ".join(errors) + ")")


def runtime_available() -> str | None:
    """The runtime's name, or None when no runtime is installed."""
    try:
        return load_interpreter_class()[1]
    except RuntimeMissingError:
        return None


# --------------------------------------------------------------------------- spec
class Scaling(BaseModel):
    """Per-feature standardisation: z = (x - mean) / std."""

    model_config = ConfigDict(extra="forbid")
    mean: list[float]
    std: list[float]


class ModelSpec(BaseModel):
    """What the gateway must know about a model to feed it and to judge its output."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["edgegw-anomaly-model"] = "edgegw-anomaly-model"
    version: int = 1
    kind: str = "custom"  # "pca_autoencoder" for fitted models
    window: int = Field(ge=1)
    features: list[str] = Field(min_length=1)
    layout: Literal["time_major"] = "time_major"
    output: Literal["reconstruction", "score"] = "reconstruction"
    scaling: Scaling | None = None
    #: per-feature divisor of reconstruction residuals (raw units); default: ``scaling.std``
    residual_scale: list[float] | None = None
    threshold: float | None = Field(default=None, gt=0)
    #: subtracted per feature (float64) before inference; None for models fed raw values
    input_offset: list[float] | None = None
    #: a gap between rows longer than this restarts the window (fit and run alike)
    max_gap_ms: int | None = Field(default=None, gt=0)
    calibration: dict[str, Any] = Field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return self.window * len(self.features)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ModelSpec:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


def spec_path_for(model_path: Path) -> Path:
    """The default spec location: the model's path with a ``.json`` suffix."""
    return model_path.with_suffix(".json")


# --------------------------------------------------------------------------- building
def build_dense_model(
    layers: Sequence[tuple[FloatArray, FloatArray]], *, description: str = ""
) -> bytes:
    """A TFLite flatbuffer of chained FULLY_CONNECTED ops (no activation), built without TF.

    ``layers[i] = (W, b)`` with ``W`` of shape ``[out, in]`` (TFLite's layout) and ``b`` of shape
    ``[out]``; the model maps ``[1, in0]`` to ``[1, out_last]``.
    """
    import flatbuffers  # lazy: optional extra [ml]
    import numpy as np  # lazy: optional extra [ml]
    from ai_edge_litert import schema_py_generated as s  # lazy: optional extra [ml]

    if not layers:
        raise ValueError("a model needs at least one layer")
    model = s.ModelT()
    model.version = 3
    model.description = description or "edgegw dense model"
    opcode = s.OperatorCodeT()
    opcode.builtinCode = s.BuiltinOperator.FULLY_CONNECTED
    opcode.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    opcode.version = 1
    model.operatorCodes = [opcode]
    model.buffers = [s.BufferT()]  # buffer 0 is the empty sentinel by convention

    tensors: list[Any] = []

    def add_tensor(name: str, shape: Sequence[int], data: np.ndarray | None) -> int:
        tensor = s.TensorT()
        tensor.name = name
        tensor.shape = list(shape)
        tensor.type = s.TensorType.FLOAT32
        if data is None:
            tensor.buffer = 0
        else:
            buf = s.BufferT()
            buf.data = np.ascontiguousarray(data, dtype="<f4").tobytes()
            model.buffers.append(buf)
            tensor.buffer = len(model.buffers) - 1
        tensors.append(tensor)
        return len(tensors) - 1

    in_size = int(layers[0][0].shape[1])
    current = add_tensor("input", [1, in_size], None)
    first_input = current
    operators = []
    for i, (w, b) in enumerate(layers):
        w = np.asarray(w, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        out_size, layer_in = w.shape
        if layer_in != in_size or b.shape != (out_size,):
            raise ValueError(
                f"layer {i}: weights {w.shape} / bias {b.shape} do not chain from {in_size}"
            )
        wt = add_tensor(f"dense{i}/weights", [out_size, layer_in], w)
        bt = add_tensor(f"dense{i}/bias", [out_size], b)
        last = i == len(layers) - 1
        out = add_tensor("output" if last else f"dense{i}/out", [1, out_size], None)
        op = s.OperatorT()
        op.opcodeIndex = 0
        op.inputs = [current, wt, bt]
        op.outputs = [out]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        options = s.FullyConnectedOptionsT()
        options.fusedActivationFunction = s.ActivationFunctionType.NONE
        op.builtinOptions = options
        operators.append(op)
        current, in_size = out, out_size

    graph = s.SubGraphT()
    graph.tensors = tensors
    graph.inputs = [first_input]
    graph.outputs = [current]
    graph.operators = operators
    graph.name = "main"
    model.subgraphs = [graph]

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def pca_autoencoder_layers(
    components: FloatArray, centre: FloatArray, scale: FloatArray
) -> list[tuple[FloatArray, FloatArray]]:
    """The two dense layers of a PCA autoencoder with standardisation folded into the weights.

    ``components`` is ``[k, D]`` (orthonormal rows in standardised space, ``D = window * F``);
    ``centre``/``scale`` have length ``D`` (per-feature mean/std tiled over the window, the centre
    possibly refined by the training mean). Encoder ``h = V (x - c) / s``, decoder
    ``x_hat = s * (V^T h) + c`` - both affine, so each is one FULLY_CONNECTED op.
    """
    import numpy as np  # lazy: optional extra [ml]

    v = np.asarray(components, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64)
    sd = np.asarray(scale, dtype=np.float64)
    w1 = v / sd[None, :]
    b1 = -(v @ (c / sd))
    w2 = v.T * sd[:, None]
    return [
        (w1.astype(np.float32), b1.astype(np.float32)),
        (w2.astype(np.float32), c.astype(np.float32)),
    ]


def dense_forward(layers: Sequence[tuple[FloatArray, FloatArray]], x: FloatArray) -> FloatArray:
    """numpy reference of ``build_dense_model``: ``x`` is ``[N, in]`` (float32 arithmetic)."""
    import numpy as np  # lazy: optional extra [ml]

    out = np.asarray(x, dtype=np.float32)
    for w, b in layers:
        out = out @ np.asarray(w, dtype=np.float32).T + np.asarray(b, dtype=np.float32)
    return out


def reconstruction_scores(x: FloatArray, x_hat: FloatArray, spec: ModelSpec) -> FloatArray:
    """Mean squared normalised reconstruction error per row of ``x`` (``[N, W*F]``).

    Residuals are divided per feature by ``spec.residual_scale`` (fitted models: the RMS residual
    on training data, so a normal window scores about 1), else by ``scaling.std``, else by 1.
    """
    import numpy as np  # lazy: optional extra [ml]

    diff = np.asarray(x, dtype=np.float64) - np.asarray(x_hat, dtype=np.float64)
    scale = spec.residual_scale or (spec.scaling.std if spec.scaling is not None else None)
    if scale is not None:
        diff = diff / np.tile(np.asarray(scale, dtype=np.float64), spec.window)[None, :]
    return np.mean(diff * diff, axis=1)


# --------------------------------------------------------------------------- inference
class TFLiteModel:
    """One loaded model: ``score(window)`` for a flattened window. Not thread-safe: use it from
    one worker at a time (the anomaly stage keeps one job in flight per model)."""

    def __init__(
        self,
        model_path: Path | None,
        spec: ModelSpec,
        *,
        num_threads: int = 1,
        model_content: bytes | None = None,
    ) -> None:
        import numpy as np  # lazy: optional extra [ml]

        interpreter_cls, self.runtime = load_interpreter_class()
        self.spec = spec
        self.path = model_path
        try:
            self._interp = make_interpreter(
                interpreter_cls, model_path, model_content, num_threads=num_threads
            )
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelShapeError(f"{model_path}: not a loadable TFLite model: {exc}") from exc
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelShapeError(
                f"{model_path}: expected 1 input and 1 output tensor, found "
                f"{len(inputs)} and {len(outputs)}"
            )
        check_shapes(spec, list(inputs[0]["shape"]), list(outputs[0]["shape"]), str(model_path))
        if inputs[0]["dtype"] != np.float32:
            raise ModelShapeError(f"{model_path}: input must be float32, is {inputs[0]['dtype']}")
        self._in_index = int(inputs[0]["index"])
        self._in_shape = tuple(int(d) for d in inputs[0]["shape"])
        self._out_index = int(outputs[0]["index"])
        scale = spec.residual_scale or (spec.scaling.std if spec.scaling is not None else None)
        self._inv_scale = (
            1.0 / np.tile(np.asarray(scale, dtype=np.float64), spec.window)
            if scale is not None
            else np.ones(spec.input_size)
        )
        self._offset = (
            np.tile(np.asarray(spec.input_offset, dtype=np.float64), spec.window)
            if spec.input_offset is not None
            else None
        )

    def forward(self, x: FloatArray) -> FloatArray:
        """Raw model output for one flattened window ``x`` (length ``W*F``), already offset by
        ``spec.input_offset`` if the spec has one."""
        import numpy as np  # lazy: optional extra [ml]

        self._interp.set_tensor(
            self._in_index, np.asarray(x, dtype=np.float32).reshape(self._in_shape)
        )
        self._interp.invoke()
        out: FloatArray = self._interp.get_tensor(self._out_index).reshape(-1).copy()
        return out

    def score(self, x: FloatArray) -> float:
        import numpy as np  # lazy: optional extra [ml]

        xs = np.asarray(x, dtype=np.float64).reshape(-1)
        if self._offset is not None:
            xs = xs - self._offset
        out = self.forward(xs)
        if self.spec.output == "score":
            return float(out[0])
        # same formula as reconstruction_scores(), without its per-call setup
        diff = (xs - out) * self._inv_scale
        return float(np.dot(diff, diff) / diff.size)


def check_shapes(spec: ModelSpec, in_shape: list[int], out_shape: list[int], where: str) -> None:
    """Raise ``ModelShapeError`` unless the tensors fit ``window x features`` of the spec."""
    w, f = spec.window, len(spec.features)
    ok_in = in_shape in ([1, w * f], [1, w, f]) or (w == 1 and in_shape == [1, f])
    if not ok_in:
        raise ModelShapeError(
            f"{where}: model input shape {in_shape} does not match window {w} x {f} features "
            f"(expected [1, {w * f}] or [1, {w}, {f}])"
        )
    n_out = 1
    for d in out_shape:
        n_out *= int(d)
    if spec.output == "reconstruction" and n_out != w * f:
        raise ModelShapeError(
            f"{where}: reconstruction output has {n_out} values, "
            f"expected {w * f} (= window x features)"
        )
    if spec.output == "score" and n_out != 1:
        raise ModelShapeError(f"{where}: score output has {n_out} values, expected 1")


def make_interpreter(
    interpreter_cls: Any,
    model_path: Path | None,
    model_content: bytes | None = None,
    *,
    num_threads: int = 1,
) -> Any:
    """An interpreter for a file or in-memory flatbuffer, without the default (XNNPACK)
    delegate, which prints an INFO line per load and gains nothing on small dense models."""
    kwargs: dict[str, Any] = {"num_threads": num_threads}
    try:
        from ai_edge_litert.interpreter import OpResolverType  # lazy: optional extra [ml]

        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    except ImportError:
        try:
            import tflite_runtime.interpreter as tfl  # lazy: optional extra [ml]

            kwargs["experimental_op_resolver_type"] = (
                tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        except ImportError:
            pass
    if model_content is not None:
        return interpreter_cls(model_content=model_content, **kwargs)
    return interpreter_cls(model_path=str(model_path), **kwargs)


def inspect_model_shapes(model_path: Path) -> tuple[list[int], list[int]]:
    """Input and output shapes of a .tflite file (needs a runtime)."""
    interpreter_cls, _ = load_interpreter_class()
    interp = make_interpreter(interpreter_cls, model_path)
    ins = interp.get_input_details()
    outs = interp.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise ModelShapeError(
            f"{model_path}: expected 1 input and 1 output tensor, found {len(ins)} and {len(outs)}"
        )
    return [int(d) for d in ins[0]["shape"]], [int(d) for d in outs[0]["shape"]]
