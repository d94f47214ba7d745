"""MindAudio DeepSpeech2: LibriSpeech preparation, training, evaluation and transcription on MindSpore."""
import os

# oneDNN picks a naive reference convolution on AVX-512 CPUs; capping the ISA at AVX2 makes
# convolutions ~50x faster. It must be set before mindspore is first imported, which is why it
# lives at the very top of the package rather than in the code that builds the model.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
# MindSpore logs every graph-compiler warning to stderr by default (GLOG_v=2), which buries the
# progress bars; show errors only unless the user asked for more.
os.environ.setdefault("GLOG_v", "3")

__version__ = "0.1.0"
