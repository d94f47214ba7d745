"""The decoder `EvalConfig.decoder_type` asks for: the one place that knows every decoder."""
from __future__ import annotations

from typing import Union

from mindaudio.config import Config
from mindaudio.data.text import CharTokenizer
from mindaudio.decoding.beam import BeamSearchDecoder
from mindaudio.decoding.greedy import GreedyDecoder

Decoder = Union[GreedyDecoder, BeamSearchDecoder]


def build_decoder(config: Config) -> Decoder:
    """`GreedyDecoder` or `BeamSearchDecoder`, as `config.EvalConfig.decoder_type` says.

    Raises `ConfigError` naming the key when the beam decoder's packages or files are missing.
    """
    blank_id = CharTokenizer.from_config(config).blank_id
    if config.EvalConfig.decoder_type == "greedy":
        return GreedyDecoder(config.labels, blank_id)
    return BeamSearchDecoder.from_config(config, blank_id)
