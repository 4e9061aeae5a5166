"""Exported graphs on OpenVINO (``--runtime openvino``): numpy and OpenVINO only, no torch, no ONNX Runtime.

OpenVINO reads the export's ONNX graphs (and ``audio_weights.bin`` beside them) as they are. A
graph is compiled once per process for each precision and thread count (:func:`compiled`), and the
compiled form is kept in OpenVINO's ``CACHE_DIR`` under the user's cache directory
(:func:`openvino_cache_dir`), so that a restart loads it instead of compiling again.

Precisions (``INFERENCE_PRECISION_HINT``): ``fp32`` (``f32``) and ``bf16``. bf16 is used only where
the export recorded that it passed verification (:data:`RECORD_FILE`, written by
``audioclip-export onnx``; :func:`verified_plan`), and only on a CPU that computes bf16 natively
(AVX512-BF16 or AMX; elsewhere OpenVINO would quietly compute f32). The record may keep the front end
and the first stages in f32 (``fp32_stages``): whole windows then run through the incremental stage
graphs, each compiled at its own precision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
"""What ``--precision`` names on OpenVINO (and, bf16 through autocast, on PyTorch)."""
HINTS = {"fp32": "f32", "bf16": "bf16"}
RECORD_FILE = "openvino.json"
"""The export's record of the OpenVINO precisions that passed its verification (:func:`write_record`)."""
STAGE_NAMES = ("front", "stem", "layer1", "layer2", "tail")
"""The incremental stage graphs in order; a bf16 plan keeps a leading run of them in f32."""
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
INSTALL_HINT = "pip install 'audioclip-stream[openvino]'"


def import_openvino():
    """The ``openvino`` module, or a one-line ``ValueError`` saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise ValueError(f"OpenVINO is not installed ({e}): {INSTALL_HINT}, or use --runtime onnxruntime") from None
    return openvino


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from :data:`CPUINFO` (Linux), or None where there is no such file."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_description() -> str:
    """The CPU's model name and its flags that matter to these runtimes (for benchmarks and logs)."""
    name = "unknown CPU"
    try:
        name = next((line.split(":", 1)[1].strip() for line in CPUINFO.read_text().splitlines()
                     if line.startswith("model name")), name)
    except OSError:
        pass
    flags = cpu_flags() or set()
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
             if f in flags]
    return f"{name}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}"


def no_native_bf16() -> str | None:
    """None when the CPU computes bf16 natively (AVX512-BF16 or AMX), else a sentence saying it does not."""
    flags = cpu_flags()
    if flags is None:  # not Linux: OpenVINO says whether its CPU plugin has bf16 kernels
        if "BF16" in core(cache=False).get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return None
        return "this CPU has no native bf16 (OpenVINO's CPU plugin lists no BF16 capability)"
    if flags & set(BF16_CPU_FLAGS):
        return None
    return ("this CPU has no native bf16 (its flags have neither avx512_bf16 nor amx_bf16), where OpenVINO would "
            "compute f32")


def openvino_cache_dir() -> Path:
    """Compiled graphs: ``$AUDIOCLIP_CACHE/openvino``, else ``$XDG_CACHE_HOME/audioclip/openvino``, else
    ``~/.cache/audioclip/openvino`` (the cache directory of :func:`audioclip.model.checkpoint.cache_dir`).

    OpenVINO keeps the weights in its compiled form (its weightless mode needs OpenVINO's own IR): about the
    export's size per precision (docs/export.md); delete the folder to free it."""
    if os.environ.get("AUDIOCLIP_CACHE"):
        return Path(os.environ["AUDIOCLIP_CACHE"]).expanduser() / "openvino"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "audioclip" / "openvino"


_cores: dict[bool, object] = {}
_compiled: dict[tuple, object] = {}
_lock = threading.Lock()
_uncached = threading.local()


@contextlib.contextmanager
def without_disk_cache():
    """Sessions made inside compile without ``CACHE_DIR``: the export's checks, on graphs in a folder that is
    renamed when it is done (OpenVINO names its cached forms by the graph's path)."""
    _uncached.on = True
    try:
        yield
    finally:
        _uncached.on = False
        with _lock:  # the export's graphs: their folder is renamed, and the process goes on (tests, a library)
            for key in [k for k in _compiled if not k[-1]]:
                del _compiled[key]


def core(*, cache: bool = True):
    """The process's ``openvino.Core`` (``cache``: with ``CACHE_DIR`` set; the export's checks compile without,
    so that graphs of a folder being built leave nothing in the user's cache)."""
    ov = import_openvino()
    with _lock:
        if cache not in _cores:
            c = ov.Core()
            if cache:
                folder = openvino_cache_dir()
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    c.set_property({"CACHE_DIR": str(folder)})
                except OSError as e:
                    log.warning("OpenVINO compiles without a cache: %s is not writable (%s)", folder, e.strerror or e)
            _cores[cache] = c
        return _cores[cache]


def compiled(path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None, cache: bool = True):
    """``path`` compiled for the CPU at ``precision`` with ``threads`` (None: OpenVINO's default), once per process.

    A graph OpenVINO cannot read raises a one-line ``ValueError`` that names it.
    """
    if precision not in HINTS:
        raise ValueError(f"OpenVINO precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    path = Path(path).resolve()
    stat = path.stat() if path.exists() else None
    key = (str(path), stat and (stat.st_mtime_ns, stat.st_size), precision, threads, cache)
    with _lock:
        found = _compiled.get(key)
    if found is not None:
        return found
    c = core(cache=cache)
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:  # from the path: OpenVINO then finds the compiled form in its cache without reading the graph
        result = c.compile_model(str(path), "CPU", config)
    except RuntimeError as e:  # a truncated copy, a foreign or missing file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: OpenVINO cannot load this graph ({reason}); copy the export again or write it "
                         f"again with `audioclip-export onnx`") from None
    with _lock:
        _compiled[key] = result
    log.debug("OpenVINO compiled %s at %s (%s)", path.name, precision,
              "from the cache" if cache and result.get_property("LOADED_FROM_CACHE") else "compiled")
    return result


class _Meta:
    def __init__(self, metadata: dict):
        self.custom_metadata_map = metadata


class _Port:
    def __init__(self, name: str):
        self.name = name


class OpenVinoSession:
    """One graph compiled by OpenVINO behind the part of ONNX Runtime's ``InferenceSession`` that the
    classifiers use (``run``, ``get_inputs``, ``get_outputs``, ``get_modelmeta``, ``get_providers``): the
    classifiers and the incremental encoder run either runtime through the same calls. Each session has
    its own infer request; the compiled graph is shared within the process."""

    def __init__(self, path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None,
                 cache: bool | None = None):
        self.path, self.precision = Path(path), precision
        cache = not getattr(_uncached, "on", False) if cache is None else cache
        self.compiled = compiled(path, precision=precision, threads=threads, cache=cache)
        self._metadata: dict | None = None
        self._request = self.compiled.create_infer_request()
        self._inputs = [_Port(p.get_any_name()) for p in self.compiled.inputs]
        self._outputs = [_Port(p.get_any_name()) for p in self.compiled.outputs]

    def get_inputs(self) -> list[_Port]:
        return self._inputs

    def get_outputs(self) -> list[_Port]:
        return self._outputs

    def get_modelmeta(self) -> _Meta:
        """The graph's ``metadata_props``, read from the file (without its weights) on first use."""
        if self._metadata is None:
            import onnx

            graph = onnx.load(str(self.path), load_external_data=False)
            self._metadata = {p.key: p.value for p in graph.metadata_props}
        return _Meta(self._metadata)

    def get_providers(self) -> list[str]:
        return [f"OpenVINO CPU {self.precision}"]

    def run(self, output_names: Sequence[str] | None, feeds: dict) -> list[np.ndarray]:
        results = self._request.infer({name: np.ascontiguousarray(x) for name, x in feeds.items()})
        names = [p.name for p in self._outputs] if output_names is None else list(output_names)
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return [np.array(by_name[name], copy=True) for name in names]


def write_record(folder: Path, record: dict) -> None:
    """Write the export's OpenVINO record: ``{"openvino": version, "cpu": ..., "precisions": {precision:
    {"fp32_stages": [...]}}, "not_verified": {precision: reason}}``."""
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def verified_plan(folder: str | os.PathLike, precision: str) -> list[str]:
    """The stages (:data:`STAGE_NAMES`) that stay f32 when ``folder`` runs at ``precision`` on OpenVINO, as
    the export recorded them; a one-line ``ValueError`` when OpenVINO is not installed, when bf16 is asked on
    a CPU without native bf16, or when the export did not verify ``precision`` on OpenVINO."""
    import_openvino()
    folder = Path(folder)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)} on OpenVINO")
    if precision == "bf16" and (why := no_native_bf16()):
        raise ValueError(f"--precision bf16: {why}; use --precision fp32")
    file = folder / RECORD_FILE
    if not file.is_file():
        raise ValueError(f"{folder} records no OpenVINO verification (exported before this version, with "
                         f"--no-openvino, or where OpenVINO was not installed): export it again with "
                         f"`audioclip-export onnx`, or use --runtime onnxruntime")
    try:
        record = json.loads(file.read_text())
        plans = record["precisions"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{file}: not a record written by audioclip-export ({e}); export the folder again") from None
    if precision not in plans:
        why = record.get("not_verified", {}).get(precision, "not checked")
        raise ValueError(f"{folder}: OpenVINO {precision} was not verified for this export ({why}); use --precision "
                         f"{'fp32' if precision != 'fp32' else 'bf16'} or --runtime onnxruntime")
    return list(plans[precision].get("fp32_stages", []))
