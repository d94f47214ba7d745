"""Validation during data-parallel training: every utterance once, shared by the ranks.

Each rank decodes its share of the validation set (the length-sorted plan of `make_sampler`,
which gives every utterance to exactly one rank) and counts its word and character edits; the
counts are summed over the ranks, so the WER/CER are those of the whole set, equal to what
`mindaudio.metrics` gives for it in one process. Before decoding, BatchNorm's running statistics
(per rank during training) are replaced by rank 0's, so all ranks evaluate exactly the model
rank 0 saves.

Sharing keeps the ranks busy alike: MindSpore's CPU collectives give up on a peer that is silent
for MS_NODE_TIMEOUT seconds (30 by default), which a long validation on rank 0 alone would exceed.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import jiwer
import numpy as np

import mindspore as ms

from mindaudio.config import Config
from mindaudio.data.dataset import Split, build_dataset, make_sampler
from mindaudio.data.sampler import Batch
from mindaudio.data.text import CharTokenizer
from mindaudio.evaluation import transcribe_batches
from mindaudio.runtime.collectives import broadcast_parameters, sum_over_ranks
from mindaudio.runtime.device import Runtime

# Positions in the count vector.
WORD_EDITS, REFERENCE_WORDS, CHAR_EDITS, REFERENCE_CHARS = range(4)


def error_counts(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """int64 (4,): word edits, reference words, character edits, reference characters.

    Characters are counted with spaces removed, as `metrics.char_error_rate` scores them.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return np.zeros(4, dtype=np.int64)
    words = jiwer.process_words(list(references), list(hypotheses))
    chars = jiwer.process_characters([r.replace(" ", "") for r in references],
                                     [h.replace(" ", "") for h in hypotheses])
    return np.array([words.substitutions + words.deletions + words.insertions,
                     words.substitutions + words.deletions + words.hits,
                     chars.substitutions + chars.deletions + chars.insertions,
                     chars.substitutions + chars.deletions + chars.hits], dtype=np.int64)


def rates_from_counts(counts: Sequence[int]) -> Tuple[float, float]:
    """(WER, CER) in percent from summed `error_counts`."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts[REFERENCE_WORDS] == 0 or counts[REFERENCE_CHARS] == 0:
        raise ValueError("no reference words to score")
    return (100.0 * counts[WORD_EDITS] / counts[REFERENCE_WORDS],
            100.0 * counts[CHAR_EDITS] / counts[REFERENCE_CHARS])


def validation_batches(split: Split, config: Config, rank: int = 0, world_size: int = 1) -> List[Batch]:
    """One rank's share of validation's plan: `EvalConfig.batch_size`, sorted by length."""
    return make_sampler(split, config.EvalConfig.batch_size, train=False, rank=rank,
                        world_size=world_size).batches(0)


def validate_shared(model: ms.nn.Cell, split: Split, config: Config, tokenizer: CharTokenizer,
                    runtime: Runtime, progress: bool = True) -> Tuple[float, float]:
    """Greedy (WER, CER) in percent of `model` over `split`, each rank decoding its share.

    Collective: every rank must call it at the same point. Leaves the model in eval mode.
    """
    broadcast_parameters(model.untrainable_params())
    batches = validation_batches(split, config, runtime.rank, runtime.world_size)
    dataset = build_dataset(split, config.SpectConfig, batches, tokenizer.blank_id,
                            config.TrainingConfig.num_workers)
    hypotheses = transcribe_batches(model, dataset.create_dict_iterator(num_epochs=1, output_numpy=True),
                                    config.labels, tokenizer.blank_id, progress=progress,
                                    total=len(batches))
    mine = sorted(hypotheses)
    references = [tokenizer.decode(split.labels[index]) for index in mine]
    counts = error_counts(references, [hypotheses[index] for index in mine])
    # Utterances decoded, summed too: a check that the shares covered the set exactly.
    totals = sum_over_ranks(list(counts) + [len(mine)])
    if totals[-1] != len(split.utterances):
        raise RuntimeError(f"validation decoded {totals[-1]} utterances over all ranks, "
                           f"but {split.manifest} holds {len(split.utterances)}")
    return rates_from_counts(totals[:4])


__all__ = ["error_counts", "rates_from_counts", "validate_shared"]
