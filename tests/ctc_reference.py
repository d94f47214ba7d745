"""Pure-numpy CTC in float64, an independent reference for the device loss (tests only).

Log-space forward-backward over the blank-extended label sequence (Graves et al., 2006), plus a
brute-force path enumeration for tiny cases that shares no code with it.
"""
from __future__ import annotations

import itertools

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _logsumexp(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    if top == -np.inf:
        return -np.inf
    return float(top + np.log(np.exp(values - top).sum()))


def extend_with_blanks(target, blank: int) -> np.ndarray:
    """[a, b] -> [blank, a, blank, b, blank]."""
    extended = np.full(2 * len(target) + 1, blank, dtype=np.int64)
    extended[1::2] = target
    return extended


def _can_skip(extended: np.ndarray, s: int, blank: int) -> bool:
    """Whether state s may be entered from s - 2 (skipping a blank): only between different labels."""
    return s >= 2 and extended[s] != blank and extended[s] != extended[s - 2]


def forward_backward(log_probs: np.ndarray, target, blank: int):
    """Log alpha and log beta of one utterance.

    log_probs: (T, C) log-probabilities; target: label indices without blanks.
    Returns (log_alpha, log_beta), each (T, 2L+1). alpha_t(s) includes the emission at t; beta_t(s)
    is the probability of frames t+1.. given state s at t (excludes the emission at t), so that
    alpha_t(s) * beta_t(s) is the total probability of paths through state s at time t.
    """
    extended = extend_with_blanks(target, blank)
    num_frames, num_states = log_probs.shape[0], len(extended)
    log_alpha = np.full((num_frames, num_states), -np.inf)
    log_beta = np.full((num_frames, num_states), -np.inf)

    log_alpha[0, 0] = log_probs[0, extended[0]]
    if num_states > 1:
        log_alpha[0, 1] = log_probs[0, extended[1]]
    for t in range(1, num_frames):
        for s in range(num_states):
            sources = [log_alpha[t - 1, s]]
            if s >= 1:
                sources.append(log_alpha[t - 1, s - 1])
            if _can_skip(extended, s, blank):
                sources.append(log_alpha[t - 1, s - 2])
            log_alpha[t, s] = _logsumexp(sources) + log_probs[t, extended[s]]

    log_beta[-1, -1] = 0.0
    if num_states > 1:
        log_beta[-1, -2] = 0.0
    for t in range(num_frames - 2, -1, -1):
        for s in range(num_states):
            successors = [log_beta[t + 1, s] + log_probs[t + 1, extended[s]]]
            if s + 1 < num_states:
                successors.append(log_beta[t + 1, s + 1] + log_probs[t + 1, extended[s + 1]])
            if s + 2 < num_states and _can_skip(extended, s + 2, blank):
                successors.append(log_beta[t + 1, s + 2] + log_probs[t + 1, extended[s + 2]])
            log_beta[t, s] = _logsumexp(successors)
    return log_alpha, log_beta


def ctc_loss(logits: np.ndarray, target, blank: int) -> float:
    """-log p(target | logits) for one utterance; logits: (T, C) raw scores."""
    log_alpha, _ = forward_backward(log_softmax(logits.astype(np.float64)), target, blank)
    final = [log_alpha[-1, -1]] + ([log_alpha[-1, -2]] if log_alpha.shape[1] > 1 else [])
    return -_logsumexp(final)


def ctc_loss_and_grad(logits: np.ndarray, target, blank: int):
    """Loss and its gradient w.r.t. the raw logits (T, C) of one utterance.

    d(-log p)/d logit[t, k] = softmax[t, k] - sum over states s labelled k of the posterior of
    being in s at t (alpha_t(s) beta_t(s) / p).
    """
    log_probs = log_softmax(logits.astype(np.float64))
    log_alpha, log_beta = forward_backward(log_probs, target, blank)
    final = [log_alpha[-1, -1]] + ([log_alpha[-1, -2]] if log_alpha.shape[1] > 1 else [])
    log_p = _logsumexp(final)
    posterior = np.exp(log_alpha + log_beta - log_p)  # (T, 2L+1)
    extended = extend_with_blanks(target, blank)
    occupancy = np.zeros_like(log_probs)
    for s, label in enumerate(extended):
        occupancy[:, label] += posterior[:, s]
    return -log_p, np.exp(log_probs) - occupancy


def collapse(path, blank: int) -> tuple:
    """CTC's many-to-one map: merge repeats, then drop blanks."""
    merged = [label for i, label in enumerate(path) if i == 0 or label != path[i - 1]]
    return tuple(label for label in merged if label != blank)


def brute_force_loss(logits: np.ndarray, target, blank: int) -> float:
    """-log of the summed probability of every frame-level path collapsing to target (C**T paths)."""
    log_probs = log_softmax(logits.astype(np.float64))
    num_frames, num_classes = log_probs.shape
    target = tuple(int(label) for label in target)
    path_log_probs = [
        sum(log_probs[t, label] for t, label in enumerate(path))
        for path in itertools.product(range(num_classes), repeat=num_frames)
        if collapse(path, blank) == target]
    if not path_log_probs:
        return np.inf
    return -_logsumexp(path_log_probs)


def batch_loss_and_grad(logits: np.ndarray, logit_lengths, labels, label_lengths, blank: int):
    """Per-utterance losses (B,) and gradient of their batch mean w.r.t. logits (T, B, C).

    Frames beyond an utterance's length get zero gradient; labels beyond its label length are
    ignored.
    """
    losses = np.zeros(logits.shape[1])
    grad = np.zeros(logits.shape, dtype=np.float64)
    for b in range(logits.shape[1]):
        frames = int(logit_lengths[b])
        target = np.asarray(labels[b][:int(label_lengths[b])])
        losses[b], grad_b = ctc_loss_and_grad(logits[:frames, b], target, blank)
        grad[:frames, b] = grad_b / logits.shape[1]
    return losses, grad
