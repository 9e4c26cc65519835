"""The accuracy guard: when a faster engine or precision may become a default.

A candidate passes only if, over every language of the reference (all 205 SIB-200 languages for the
defaults), its mean accuracy is within `mean_points` of the reference (fp32 PyTorch) and no single
language loses more than `worst_points`. Points are accuracy x 100.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import XlpromptError

MEAN_POINTS = 0.5
WORST_POINTS = 2.0


@dataclass(frozen=True)
class GuardResult:
    passed: bool
    languages: int
    mean_delta: float     # candidate - reference, points
    worst_delta: float    # the most negative per-language change, points
    worst_language: str
    best_delta: float

    def line(self, name: str = "candidate", reference: str = "fp32 torch") -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"accuracy guard {name} vs {reference} over {self.languages} languages: mean {self.mean_delta:+.2f} "
                f"points (limit -{MEAN_POINTS}), worst {self.worst_delta:+.2f} ({self.worst_language}; limit "
                f"-{WORST_POINTS}), best {self.best_delta:+.2f} -> {verdict}")


def accuracy_guard(reference: dict[str, float], candidate: dict[str, float], mean_points: float = MEAN_POINTS,
                   worst_points: float = WORST_POINTS) -> GuardResult:
    """Compare per-language accuracies (fractions in [0, 1]); both must cover the same languages."""
    if not reference:
        raise XlpromptError("The accuracy guard needs at least one language.")
    if set(reference) != set(candidate):
        missing = sorted(set(reference) ^ set(candidate))[:5]
        raise XlpromptError(f"The accuracy guard compares the same languages on both sides; these differ: {missing}.")
    deltas = {code: 100.0 * (candidate[code] - reference[code]) for code in sorted(reference)}
    mean = sum(deltas.values()) / len(deltas)
    worst_language = min(deltas, key=deltas.get)
    worst = deltas[worst_language]
    passed = mean >= -mean_points and worst >= -worst_points
    return GuardResult(passed, len(deltas), mean, worst, worst_language, max(deltas.values()))
