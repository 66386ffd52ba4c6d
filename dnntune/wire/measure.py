"""Measure wire encodings on a real model: bytes, codec times and fidelity at every cut.

One compiled pass of the whole model over the samples yields every tensor that crosses
some cut and the float32 reference output. Each crossing tensor is then encoded and
decoded once per sample and encoding (its size and codec times do not depend on the
cut), and for every cut each lossy encoding's decoded tensors are run through the cut's
tail, eagerly and all lossy encodings in one batch, to compare the final top-1 with the
unsplit model. A cut's bytes and times are the sums over the tensors crossing it, per
sample, times the graph's batch. Encode times are multiplied by ``device_factor`` (the
emulated phone's slowdown); decode times are the cloud's (this machine).

Example:
    >>> # samples = load_samples((224, 224, 3), "mobilenet_v2")
    >>> # wire = measure_wire(loaded.model, loaded.graph, parse_encodings("fp32,int8"), samples)
    >>> # wire.bytes_up[1, 0]   # int8 bytes at cut 0
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dnntune.analysis.encodings import EncodedCuts
from dnntune.errors import DnntuneError
from dnntune.model.cuts import enumerate_cuts
from dnntune.model.graph import LayerGraph
from dnntune.profiling.profile import Profile
from dnntune.wire.codecs import Encoding
from dnntune.wire.samples import Samples, load_samples, preprocess

Progress = Callable[[str, int, int], None]


def measure_wire(model: Any, graph: LayerGraph, encodings: Sequence[Encoding],
                 samples: Samples, *, device_factor: float = 1.0,
                 progress: Progress | None = None) -> EncodedCuts:
    """Every encoding at every prefix cut of ``graph`` (see the module docstring).

    Raises:
        DnntuneError: the model has several inputs, or the samples do not fit it.
    """
    from dnntune.model.keras_graph import walk_model
    from dnntune.model.loading import import_keras
    from dnntune.model.replay import NodeProgram

    import_keras()
    if len(graph.model_inputs) != 1:
        raise DnntuneError(f"{graph.model_name}: --wire measures models with one input, "
                           f"this one has {len(graph.model_inputs)}")
    (input_name,) = graph.model_inputs
    want = graph.tensor(input_name).shape[1:]
    if tuple(samples.inputs.shape[1:]) != tuple(want):
        raise DnntuneError(f"samples of shape {list(samples.inputs.shape[1:])} do not fit "
                           f"{graph.model_name}'s input {list(want)}")
    cuts = enumerate_cuts(graph)
    crossing = list(dict.fromkeys(t.name for c in cuts for t in c.tensors))
    walk = walk_model(model, graph.atomic)
    output = graph.model_outputs[0]
    names = tuple(n for n in dict.fromkeys([*crossing, output]) if n != input_name)
    values = dict(zip(names, NodeProgram(walk.nodes, walk.inputs, names, "wire pass")(
        [samples.inputs]), strict=True))
    values[input_name] = samples.inputs
    reference = values[output].reshape(len(samples.names), -1)
    per_tensor, decoded = _codec_stats(encodings, crossing, values, input_name, samples,
                                       progress)
    batch = {t: (graph.tensor(t).shape[0] or 1) if graph.tensor(t).shape else 1
             for t in crossing}
    shape = (len(encodings), len(cuts))
    out = {k: np.full(shape, np.nan) for k in ("bytes", "enc", "dec", "agree", "abs", "rel")}
    fidelity = _Fidelity(model, graph, walk, reference, decoded)
    for p, cut in enumerate(cuts):
        if progress is not None:
            progress("fidelity at every cut", p, len(cuts))
        names_p = [t.name for t in cut.tensors]
        if not names_p:
            continue
        for e, enc in enumerate(encodings):
            if any((enc.name, t) not in per_tensor for t in names_p):
                continue
            for k, col in (("bytes", 0), ("enc", 1), ("dec", 2)):
                out[k][e, p] = float(sum(per_tensor[(enc.name, t)][col] * batch[t]
                                         for t in names_p))
            out["agree"][e, p], out["abs"][e, p], out["rel"][e, p] = \
                fidelity.at(p, tuple(names_p), _fidelity_key(enc))
    out["enc"] *= device_factor
    tensor_encs = [e for e in encodings if not e.for_input]

    def column(enc: Encoding, k: int, factor: float = 1.0) -> dict[str, float]:
        if enc.for_input:
            return {}
        return {t: per_tensor[(enc.name, t)][k] * factor * batch[t] for t in crossing}
    return EncodedCuts(
        names=tuple(e.name for e in encodings), bytes_up=out["bytes"], encode_ms=out["enc"],
        decode_ms=out["dec"], agreement=out["agree"], max_abs_error=out["abs"],
        max_rel_error=out["rel"],
        tensor_bytes=tuple(column(e, 0) for e in encodings),
        tensor_encode_ms=tuple(column(e, 1, device_factor) for e in encodings),
        tensor_decode_ms=tuple(column(e, 2) for e in encodings),
        samples=samples.describe() + f", preprocessing {samples.preprocessing}",
        device_factor=device_factor,
        notes=() if tensor_encs else ("no tensor encoding: only cut 0 can send",))


def _fidelity_key(enc: Encoding) -> str | None:
    """Encodings that decode to the same values share one fidelity run (zstd is lossless)."""
    if enc.lossless:
        return None
    return f"jpeg{enc.quality}" if enc.codec == "jpeg" else enc.codec


def _codec_stats(encodings: Sequence[Encoding], crossing: Sequence[str],
                 values: dict[str, np.ndarray], input_name: str, samples: Samples,
                 progress: Progress | None
                 ) -> tuple[dict[tuple[str, str], tuple[float, float, float]],
                            dict[tuple[str, str], Callable[[], np.ndarray]]]:
    """Per (encoding, tensor): mean bytes, encode ms, decode ms per sample; and for each
    lossy fidelity key a function that decodes its payloads again (payloads are kept,
    not decoded tensors: a quarter of the memory for int8)."""
    stats: dict[tuple[str, str], tuple[float, float, float]] = {}
    decoded: dict[tuple[str, str], Callable[[], np.ndarray]] = {}
    for e, enc in enumerate(encodings):
        if progress is not None:
            progress("encoding every crossing tensor", e, len(encodings))
        for t in crossing:
            if enc.for_input and (t != input_name or samples.pixels is None):
                continue
            source = samples.pixels if enc.for_input else values[t]
            assert source is not None
            sizes, enc_s, dec_s, payloads = [], [], [], []
            enc.decode(enc.encode(source[0]), source[0].shape)  # warm-up: imports, caches
            for x in source:
                start = time.perf_counter()
                payload = enc.encode(x)
                middle = time.perf_counter()
                y = enc.decode(payload, x.shape)
                if enc.for_input:
                    y = preprocess(y, samples.preprocessing)
                end = time.perf_counter()
                sizes.append(len(payload))
                enc_s.append(middle - start)
                dec_s.append(end - middle)
                payloads.append(payload)
            stats[(enc.name, t)] = (float(np.mean(sizes)), 1e3 * float(np.mean(enc_s)),
                                    1e3 * float(np.mean(dec_s)))
            key = _fidelity_key(enc)
            if key is not None and (key, t) not in decoded:
                decoded[(key, t)] = _decoder(enc, payloads, source.shape[1:],
                                             samples.preprocessing)
    return stats, decoded


def _decoder(enc: Encoding, payloads: list[bytes], shape: tuple[int, ...], mode: str
             ) -> Callable[[], np.ndarray]:
    def decode() -> np.ndarray:
        back = [enc.decode(p, shape) for p in payloads]
        stacked = np.stack(back)
        return (preprocess(stacked, mode) if enc.for_input else stacked).astype(np.float32)
    return decode


class _Fidelity:
    """Top-1 agreement and output errors of the lossy encodings at each cut."""

    def __init__(self, model: Any, graph: LayerGraph, walk: Any, reference: np.ndarray,
                 decoded: dict[tuple[str, str], Callable[[], np.ndarray]]) -> None:
        self.graph, self.walk, self.reference = graph, walk, reference
        self.decoded = decoded
        self.top1 = reference.argmax(axis=1)
        self.scale = float(np.abs(reference).max()) or 1.0
        self.cache: dict[tuple[int, tuple[str, ...]], dict[str, tuple[float, float, float]]] = {}

    def at(self, p: int, names: tuple[str, ...], key: str | None
           ) -> tuple[float, float, float]:
        if key is None:
            return 1.0, 0.0, 0.0
        cached = self.cache.get((p, names))
        if cached is None:
            cached = self.cache[(p, names)] = self._run(p, names)
        return cached.get(key, (np.nan, np.nan, np.nan))

    def _run(self, p: int, names: tuple[str, ...]) -> dict[str, tuple[float, float, float]]:
        """Every lossy key's decoded tensors through the tail of cut ``p``, one batch."""
        import tensorflow as tf

        from dnntune.model.replay import NodeProgram

        keys = sorted({k for k, t in self.decoded if all((k, n) in self.decoded
                                                         for n in names)})
        if not keys:
            return {}
        output = self.graph.model_outputs[0]
        try:
            tail = NodeProgram(self.walk.nodes[p:], names, (output,), f"wire tail at cut {p}")
        except DnntuneError:  # the first output is already on the device: not measured
            return {k: (np.nan, np.nan, np.nan) for k in keys}
        feeds = [tf.constant(np.concatenate([self.decoded[(k, n)]() for k in keys]))
                 for n in names]
        (result,) = tail.run_symbolic(*feeds)
        result = np.asarray(result).reshape(len(keys), *self.reference.shape)
        out = {}
        for k, got in zip(keys, result, strict=True):
            err = np.abs(got - self.reference)
            out[k] = (float(np.mean(got.argmax(axis=1) == self.top1)),
                      float(err.max()), float(err.max()) / self.scale)
        return out


def unmeasurable(graph: LayerGraph, samples_dir: str | None) -> str | None:
    """Why encodings cannot be measured on ``graph``'s model, or ``None``."""
    if len(graph.model_inputs) != 1:
        return f"{graph.model_name} has {len(graph.model_inputs)} inputs (one is measured)"
    spec = graph.tensor(graph.model_inputs[0])
    if not spec.dtype.startswith("float"):
        return f"{graph.model_name} takes {spec.dtype} inputs, not float tensors"
    shape = spec.shape[1:]
    if samples_dir is None and not (len(shape) == 3 and shape[-1] in (1, 3)):
        return (f"{graph.model_name} does not take images (input {list(shape)}); "
                "give --samples DIR with .npy inputs")
    return None


def measure_for_profiles(device: Profile, encodings: Sequence[Encoding], *,
                         model: str | None = None, input_shape: tuple[int, ...] | None = None,
                         seed: int | None = None, samples_dir: str | None = None,
                         progress: Progress | None = None) -> EncodedCuts:
    """:func:`measure_wire` for the model a device profile was measured on.

    ``model`` defaults to the profile's model name (a zoo model is loaded from the
    calibrated cache, so these are the profiled weights). Encode times are scaled by the
    profile's emulation factor (``emulated:``/``scaled:`` devices); for a device measured
    as it is, they are this machine's, as the note says.

    Raises:
        DnntuneError: the model's layers differ from the profile's, or bad samples.
    """
    from dnntune.model.loading import load_model

    meta = device.meta
    spec = model or meta.model_name
    profiled = tuple(device.graph.tensor(device.graph.model_inputs[0]).shape[1:])
    if input_shape is None and model is None:
        input_shape = profiled
    seed = meta.seed if seed is None else seed
    loaded = load_model(spec, [input_shape] if input_shape else None, batch_size=1,
                        seed=seed, name=meta.model_name)
    if loaded.graph.tensor(loaded.graph.model_inputs[0]).shape[1:] != profiled:
        # a user's file profiled at --input-shape: rebuilt at that shape, as the sides did
        loaded = load_model(spec, [profiled], batch_size=1, seed=seed, name=meta.model_name)
    if loaded.graph.layer_names != device.graph.layer_names:
        raise DnntuneError(f"--wire: the model {spec} has other layers than the device "
                           f"profile of {meta.model_name}; give the profiled model (--model)")
    shape = loaded.graph.tensor(loaded.graph.model_inputs[0]).shape[1:]
    samples = load_samples(shape, meta.model_name, samples_dir)
    emulation = meta.emulation or {}
    factor = float(emulation.get("factor", 1.0)) if emulation else 1.0
    wire = measure_wire(loaded.model, loaded.graph, encodings, samples, device_factor=factor,
                        progress=progress)
    if not emulation:
        wire = dataclasses.replace(wire, notes=(*wire.notes, "encode times are this "
                                                "machine's: the device was not emulated"))
    return wire
