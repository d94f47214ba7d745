"""The server's model side, built once from the config: the model worker, the recogniser, the live
session factory and the model's description for GET /health."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mindaudio.checkpoint import load_model_weights
from mindaudio.config import Config
from mindaudio.data.features import fft_size
from mindaudio.decoding.select import build_decoder
from mindaudio.inference import forward_compile_cache
from mindaudio.models.build import build_model
from mindaudio.runtime.compile_cache import CompileOnFirstUse
from mindaudio.serving.audio import PCM_FORMAT, Limits
from mindaudio.serving.live import SessionFactory, incremental_factory, redecoding_factory
from mindaudio.serving.recognition import Recognizer
from mindaudio.serving.worker import ModelWorker
from mindaudio.streaming import StreamingRecogniser, is_streamable


@dataclass
class Service:
    worker: ModelWorker
    recognizer: Recognizer
    sessions: SessionFactory
    limits: Limits
    description: dict
    active_streams: int = 0
    counters: dict = field(default_factory=lambda: {"requests": 0, "errors": 0, "streams": 0})

    def health(self) -> dict:
        return {"status": "ok", **self.description, "limits": self.limits.as_dict(),
                "active_streams": self.active_streams, "queued": self.worker.queued,
                "worker": self.worker.stats.as_dict(), **self.counters}

    def close(self) -> None:
        self.worker.stop()
        self.recognizer.close()


def build_service(config: Config, checkpoint: str, device: str, limits: Optional[Limits] = None,
                  max_batch: int = 8, batch_wait: float = 0.005, partial_interval: float = 1.0,
                  chunk_seconds: float = 20.0, context_seconds: float = 2.0,
                  sessions: Optional[SessionFactory] = None, compile_cache_dir: str = "") -> Service:
    """Load `checkpoint` (a path or an http(s) URL) into the model `config` describes, start the
    model worker (compiling the first graph) and describe it all.

    sessions: how live streams are recognised (default: a streaming recogniser per stream when the
    model can stream, see `mindaudio.streaming`; else re-decoding the audio so far every
    `partial_interval` seconds, for bidirectional models); see `mindaudio.serving.live`.
    compile_cache_dir: keep each batch shape's graph there (`Runtime.compile_cache_dir`; '' = not
    kept; an unmasked model's are never kept: it runs every length unpadded).
    """
    limits = limits or Limits()
    model = build_model(config)
    load_model_weights(model, checkpoint)
    decoder = build_decoder(config)
    masked = config.ModelConfig.masked
    compiler = CompileOnFirstUse(forward_compile_cache(compile_cache_dir, config) if masked else None)
    worker = ModelWorker(model, masked=masked, max_batch=max_batch, batch_wait=batch_wait, compiler=compiler)
    recognizer = Recognizer(worker, config.SpectConfig, decoder, chunk_seconds, context_seconds)
    if sessions is None and is_streamable(config):
        sessions = incremental_factory(
            recognizer, lambda: StreamingRecogniser(model, config.SpectConfig, decoder=decoder))
    parameters = sum(int(p.size) for p in model.get_parameters())
    bidirectional = bool(getattr(model, "bidirectional", True))
    description = {
        "model": "DeepSpeech2",
        "checkpoint": checkpoint,
        "config": config.source,
        "device": device,
        "parameters": parameters,
        "hidden_size": config.ModelConfig.hidden_size,
        "hidden_layers": config.ModelConfig.hidden_layers,
        "bidirectional": bidirectional,
        "masked": masked,
        "sample_rate": config.SpectConfig.sample_rate,
        "labels": "".join(config.labels),
        "decoder": config.EvalConfig.decoder_type,
        "max_batch": worker.max_batch,
        "stream": {"format": PCM_FORMAT, "partials": (
            f"re-decodes the audio so far at most every {partial_interval:g} s (bidirectional model)"
            if sessions is None else "incremental streaming recogniser")},
    }
    worker.start(warm_up_bins=fft_size(config.SpectConfig) // 2 + 1)
    return Service(worker, recognizer, sessions or redecoding_factory(recognizer, partial_interval), limits,
                   description)
