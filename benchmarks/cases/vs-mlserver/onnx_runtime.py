"""A minimal MLServer runtime that serves an ONNX model with onnxruntime.

MLServer ships runtimes for scikit-learn, XGBoost, LightGBM, MLflow, HuggingFace
and others, but none for ONNX (there is no `mlserver-onnx` on PyPI), so the
benchmark uses MLServer's documented custom-runtime hook: a subclass of
`mlserver.MLModel` named in model-settings.json as `implementation`.

It does what Taskmesh's node does for an OIP v2 infer call, and no more:
decode each input tensor (NumpyCodec: flat data + shape + datatype), run the
session, encode every requested output. Like Taskmesh (`session_threads`
default 1), the session uses one intra-op and one inter-op thread.
"""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        names = [o.name for o in payload.outputs] if payload.outputs else self._output_names
        results = self._session.run(names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name=n, payload=r) for n, r in zip(names, results)],
        )
