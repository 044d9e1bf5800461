"""The runtimes that execute an exported graph: onnxruntime (the default) and OpenVINO.

:func:`open_graph` returns a :class:`GraphSession` whose ``run(images)`` gives
``(boxes, scores, labels)`` for an (N, 3, H, W) float32 batch, whichever runtime runs it;
``describe()`` is the line the tools log. Both read the same ``.onnx`` file (float32 or
the INT8 graph of ``tools/export.py --int8``, whose QuantizeLinear/DequantizeLinear pairs
both runtimes execute as integer products); OpenVINO also reads the IR of ``--int8
--backend openvino`` (``model_int8.xml``, NNCF's INT8 with the fused sampling).

- **onnxruntime** (``pip install onnxruntime``): CPU, or CUDA where its GPU build is
  installed. Threads = the physical cores this process may use, worker threads spinning
  between operators (onnxruntime's default): the fastest set measured on a 2-core CPU
  (docs/deploy.md; one thread is 1.75x slower, spinning off within 3%).
- **OpenVINO** (``pip install openvino``, the ``openvino`` extra): its CPU plugin.
  ``precision`` ``'f32'`` is pinned by default (OpenVINO picks bf16 by itself on CPUs with
  bf16 units, which changes the numbers); ``'bf16'`` asks for it. Latency hint, threads as
  above.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional, Sequence, Tuple

import numpy as np

BACKENDS = ('onnxruntime', 'openvino')
PRECISIONS = ('f32', 'bf16')


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    try:
        with open('/proc/cpuinfo') as f:
            blocks = f.read().strip().split('\n\n')
    except OSError:
        blocks = []
    for block in blocks:
        fields = dict(line.split(':', 1) for line in block.splitlines() if ':' in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if fields.get('processor', '').isdigit() and int(fields['processor']) in allowed:
            cores.add((fields.get('physical id'), fields.get('core id', fields['processor'])))
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def require(module: str, extra: str = 'deploy'):
    from .onnx_export import require as _require
    return _require(module, extra)


class GraphSession:
    """An exported graph opened by one runtime; ``run(images) -> (boxes, scores,
    labels)``."""

    backend = ''

    def run(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class OnnxRuntimeSession(GraphSession):
    backend = 'onnxruntime'

    def __init__(self, path: str, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, spinning: bool = True) -> None:
        ort = require('onnxruntime')
        options = ort.SessionOptions()
        self.threads = threads or physical_cores()
        options.intra_op_num_threads = self.threads
        options.add_session_config_entry('session.intra_op.allow_spinning',
                                         '1' if spinning else '0')
        available = ort.get_available_providers()
        wanted = providers or ['CUDAExecutionProvider', 'CPUExecutionProvider']
        self.session = ort.InferenceSession(
            path, options, providers=[p for p in wanted if p in available])
        self.provider = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images):
        boxes, scores, labels = self.session.run(None, {self.input_name: images})
        return boxes, scores, labels

    def describe(self) -> str:
        return f'onnxruntime {self.provider}, {self.threads} threads'


class OpenVinoSession(GraphSession):
    backend = 'openvino'

    def __init__(self, path: str, precision: str = 'f32', device: str = 'CPU',
                 threads: Optional[int] = None) -> None:
        from .onnx_export import ExportError
        if precision not in PRECISIONS:
            raise ExportError(f'--precision {precision!r}: one of {", ".join(PRECISIONS)}')
        require('openvino', 'openvino')
        from .openvino_ext import shared_core
        self.threads = threads or physical_cores()
        self.precision, self.device = precision, device
        config = {'INFERENCE_PRECISION_HINT': precision, 'PERFORMANCE_HINT': 'LATENCY'}
        if device == 'CPU':
            config['INFERENCE_NUM_THREADS'] = self.threads
        self.extension = _needs_extension(path)
        # the process's one Core (an OpenVINO bug frees signal stacks of Cores that die
        # out of order: upstream/openvino_core.py)
        self.compiled = shared_core(self.extension).compile_model(path, device, config)
        self.request = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(i) for i in range(3)]

    def run(self, images):
        result = self.request.infer([images])
        boxes, scores, labels = (result[o] for o in self.outputs)
        return boxes, scores, labels.astype(np.int64, copy=False)

    def describe(self) -> str:
        fused = ', fused deformable sampling' if self.extension else ''
        return f'openvino {self.device} {self.precision}, {self.threads} threads{fused}'


def _needs_extension(path: str) -> bool:
    """Whether the sidecar beside ``path`` (where there is one) says the graph holds the
    fused OpenVINO node."""
    from .onnx_export import needs_extension, read_sidecar, sidecar_path
    return osp.isfile(sidecar_path(path)) and needs_extension(read_sidecar(path))


def open_graph(path: str, backend: str = 'onnxruntime', precision: str = 'f32',
               providers: Optional[Sequence[str]] = None,
               threads: Optional[int] = None) -> GraphSession:
    """The graph at ``path`` opened by ``backend`` (one-line errors for a missing file,
    runtime or backend name)."""
    from .onnx_export import ExportError, graph_kind
    if backend not in BACKENDS:
        raise ExportError(f'--backend {backend!r}: one of {", ".join(BACKENDS)}')
    if not osp.isfile(path):
        raise ExportError(f'{graph_kind(path)} not found: {path}')
    if backend == 'openvino':
        return OpenVinoSession(path, precision, threads=threads)
    if path.endswith('.xml'):
        raise ExportError(f'{path} is OpenVINO IR (tools/export.py --int8 --backend '
                          'openvino): run it with --backend openvino')
    if _needs_extension(path):
        raise ExportError(f'{path} holds the fused OpenVINO node (--deform-attn openvino): '
                          'run it with --backend openvino, or export with --deform-attn '
                          'onnx for onnxruntime')
    if precision != 'f32':
        raise ExportError(f'--precision {precision}: onnxruntime runs the graph in its own '
                          'types (float32, or INT8 where tools/export.py --int8 put it); '
                          'bf16 is an OpenVINO setting (--backend openvino)')
    return OnnxRuntimeSession(path, providers, threads)
