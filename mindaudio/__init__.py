"""MindAudio DeepSpeech2: LibriSpeech preparation, training, evaluation and transcription on MindSpore."""
import os

# oneDNN picks a naive reference convolution on AVX-512 CPUs; capping the ISA at AVX2 makes
# convolutions ~50x faster. It must be set before mindspore is first imported, which is why it
# lives at the very top of the package rather than in the code that builds the model. (Logging
# verbosity is left to the user; the command-line entry points quieten MindSpore in mindaudio.cli.)
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

__version__ = "0.1.0"
