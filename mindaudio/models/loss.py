"""CTC loss for DeepSpeech2, computed on the device.

Convention (the original MindAudio's, which used `ops.CTCLoss` then a mean over the batch): each
utterance's loss is -log p(transcript | utterance), summed over its frames, and the batch loss is
the mean of those over the batch. It is not divided by the transcript length: that keeps the
gradient scale of the original run (whose learning rate was tuned for it) and weights every
utterance by how much it has to say.

Utterances whose transcript cannot fit in their output frames (label length plus the number of
adjacent repeated labels exceeds the frames) have no valid alignment. MindSpore's CTC kernel
returns inf for them even with `zero_infinity`, or fails outright when the label is longer than
the frames. The data pipeline drops such utterances; should one still arrive, it is scored against
an empty transcript (always feasible) and its loss is replaced by 0, so it contributes neither loss
nor gradient instead of poisoning the step.
"""
from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import nn, ops


def _required_frames(labels, label_lengths):
    """Fewest frames that can emit each transcript: length + adjacent repeats (a blank must separate them).

    labels: (B, S) int; label_lengths: (B,) int -> (B,) int.
    """
    if labels.shape[1] < 2:
        return label_lengths
    repeats = (labels[:, 1:] == labels[:, :-1]).astype(label_lengths.dtype)
    # A repeat at pair (s-1, s) only counts when position s is inside the transcript.
    positions = ops.arange(1, labels.shape[1], 1, dtype=label_lengths.dtype)
    inside = (positions.view(1, -1) < label_lengths.view(-1, 1)).astype(label_lengths.dtype)
    # astype: the sum is int64; with a dynamic label axis both branches above are compiled and must agree.
    return label_lengths + (repeats * inside).sum(axis=1).astype(label_lengths.dtype)


class CTCLoss(nn.Cell):
    """Per-utterance CTC loss from raw logits.

    Args:
        blank: index of the blank class; negative counts from the end (-1: the last class, the
            original's convention).
        num_classes: C when known when the cell is built; a negative `blank` is then resolved
            here instead of from `logits.shape[2]`, which a graph compiled for dynamic input
            shapes (`Cell.set_inputs` with None axes) does not know.

    construct(logits, logit_lengths, labels, label_lengths):
        logits: (T, B, C) float, pre-softmax; logit_lengths: (B,) int32 valid frames;
        labels: (B, S) int32, padded with anything beyond label_lengths; label_lengths: (B,) int32.
        Returns (B,) float32: -log p(labels | logits), 0 for infeasible utterances.
    """

    def __init__(self, blank: int = -1, num_classes: Optional[int] = None):
        super().__init__()
        self.blank = blank + num_classes if blank < 0 and num_classes is not None else blank

    def construct(self, logits, logit_lengths, labels, label_lengths):
        blank = self.blank + logits.shape[2] if self.blank < 0 else self.blank
        logit_lengths = logit_lengths.astype(ms.int32)
        labels = labels.astype(ms.int32)
        label_lengths = label_lengths.astype(ms.int32)
        feasible = _required_frames(labels, label_lengths) <= logit_lengths
        safe_lengths = ops.select(feasible, label_lengths, ops.zeros_like(label_lengths))
        log_probs = ops.log_softmax(logits, axis=-1)
        losses, _ = ops.ctc_loss(log_probs, labels, logit_lengths, safe_lengths, blank=blank,
                                 reduction="none", zero_infinity=True)
        return ops.select(feasible, losses, ops.zeros_like(losses))


class NetWithCTCLoss(nn.Cell):
    """A network emitting (logits, logit_lengths) followed by the batch-mean CTC loss.

    Built with `auto_prefix=False` (as the original's loss cell) so parameter names, and thus
    checkpoints written through a training cell around it, stay the bare model's names.

    Args:
        network: Cell mapping (features, feature_lengths) -> ((T, B, C) logits, (B,) lengths).
        blank: blank class index; -1 (default) is the last class.
        return_per_utterance: also return the (B,) per-utterance losses, e.g. for
            `ms.value_and_grad(net, None, weights, has_aux=True)` (gradients follow the mean only).

    construct(features, feature_lengths, labels, label_lengths):
        features: (B, 1, F, T) float32; feature_lengths: (B,) int32;
        labels: (B, S) int32 padded; label_lengths: (B,) int32.
        Returns the scalar mean loss, or (mean loss, (B,) losses) with return_per_utterance.
    """

    def __init__(self, network: nn.Cell, blank: int = -1, return_per_utterance: bool = False):
        super().__init__(auto_prefix=False)
        self.network = network
        # The network's alphabet when it says (DeepSpeechModel.labels): the blank is then a constant.
        labels = getattr(network, "labels", None)
        self.ctc = CTCLoss(blank, len(labels) if labels is not None else None)
        self.return_per_utterance = return_per_utterance

    def construct(self, features, feature_lengths, labels, label_lengths):
        logits, logit_lengths = self.network(features, feature_lengths)
        losses = self.ctc(logits, logit_lengths, labels, label_lengths)
        loss = losses.mean()
        if self.return_per_utterance:
            return loss, losses
        return loss
