"""Edit distance by the textbook dynamic programme: an independent reference for the metrics
(shares no code with jiwer or mindaudio.metrics; tests only)."""


def levenshtein(a, b) -> int:
    """Insertions + deletions + substitutions turning sequence `a` into `b`."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]
