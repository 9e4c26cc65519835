"""Extractive QA: question+context windows in, start/end token scores out, SQuAD EM/F1 on the answer text.

encode: each question becomes one or more windows ("features", SQuAD-style): `question </s></s> context
piece`, at most `max_length` tokens, consecutive pieces overlapping by `stride` tokens, so an answer cut
by one window boundary is whole in the next. A window's label is the (start, end) index of the answer's
first and last token in its token_ids, or (0, 0) (the first special token) when the answer is not wholly
inside. `extra["offsets"]` keeps each token's character span in the context (-1 for question and special
tokens), so a span maps back to the context's characters whatever the tokenizer; `extra["example_index"]`
names the frame row (question) of each window.

score: per question, the best-scoring valid span over all its windows (start <= end, both in the
context, at most `max_answer_tokens` tokens), cut from the context, compared with every gold answer by
SQuAD exact match and token F1 after MLQA's language-aware normalisation (below). Metrics are fractions
(x100 for the usual SQuAD percentages); "n" counts questions, not windows.
"""
from __future__ import annotations

import re
import string
import sys
import unicodedata
from collections import Counter
from functools import lru_cache

import numpy as np
import pandas as pd

from ..data.collate import Encoded
from ..core.errors import XlpromptError

# ---------------------------------------------------------------------------------- normalisation
# Copied rule for rule from MLQA's official evaluation script, mlqa_evaluation_v1.py in
# facebookresearch/MLQA (Lewis et al. 2020; code under CC BY-SA 3.0 like the data). Order: lower-case,
# drop punctuation, drop articles, re-tokenize (whitespace, or CJK characters one by one for zh).
# MLQA's script raises for languages it does not know; here those (XQuAD's el, ro, ru, th, tr) get
# whitespace tokens and no article removal, i.e. SQuAD's rules without English articles. Thai has no
# spaces between words, so its F1 is close to its exact match.
WHITESPACE_LANGS = ("en", "es", "hi", "vi", "de", "ar")
MIXED_SEGMENTATION_LANGS = ("zh",)
ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    # MLQA's pattern as written: the first branch can never match (^ after text), so every "ال"
    # (the Arabic article, but also the same letters inside words) becomes a space
    "ar": r"\sال^|ال",
}
# FLORES-style or three-letter codes of MLQA's languages, so frames with either kind of code work
_ISO3 = {"eng": "en", "spa": "es", "hin": "hi", "vie": "vi", "deu": "de", "arb": "ar", "ara": "ar",
         "zho": "zh", "cmn": "zh"}


@lru_cache(maxsize=1)
def punctuation() -> frozenset[str]:
    """Unicode categories P* plus ASCII string.punctuation (which adds symbols such as $ + < = > ^ ` | ~)."""
    return frozenset(chr(i) for i in range(sys.maxunicode)
                     if unicodedata.category(chr(i)).startswith("P")).union(string.punctuation)


def mlqa_language(code: str) -> str:
    base = str(code).replace("-", "_").split("_")[0].lower()
    return _ISO3.get(base, base)


def mixed_segmentation(text: str) -> list[str]:
    """MLQA's zh tokenization: each CJK ideograph (U+4E00-U+9FA5) and punctuation mark is a token; runs of
    other characters are split on whitespace."""
    punct, out, run = punctuation(), [], ""
    for char in text:
        if re.search(r"[\u4e00-\u9fa5]", char) or char in punct:
            out.extend(run.split())
            run = ""
            out.append(char)
        else:
            run += char
    out.extend(run.split())
    return out


def normalize_answer(text: str, language: str) -> str:
    lang = mlqa_language(language)
    punct = punctuation()
    text = "".join(ch for ch in text.lower() if ch not in punct)
    if lang in ARTICLES:
        text = re.sub(ARTICLES[lang], " ", text)
    tokens = mixed_segmentation(text) if lang in MIXED_SEGMENTATION_LANGS else text.split()
    return " ".join(t for t in tokens if t.strip() != "")


def exact_match(prediction: str, truth: str, language: str) -> float:
    return float(normalize_answer(prediction, language) == normalize_answer(truth, language))


def f1_score(prediction: str, truth: str, language: str) -> float:
    pred = normalize_answer(prediction, language).split()
    gold = normalize_answer(truth, language).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(predictions: list[str], answers: list[list[str]], languages: list[str]) -> dict:
    """SQuAD/MLQA EM and F1, each the best over a question's gold answers, averaged over questions."""
    em = [max(exact_match(p, t, lang) for t in truths) for p, truths, lang in zip(predictions, answers, languages)]
    f1 = [max(f1_score(p, t, lang) for t in truths) for p, truths, lang in zip(predictions, answers, languages)]
    n = len(predictions)
    return {"exact_match": float(np.mean(em)) if n else float("nan"),
            "f1": float(np.mean(f1)) if n else float("nan"), "n": n}


# ------------------------------------------------------------------------------------ spans
def char_to_token_span(offsets: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """Token indices of the first and last token of the characters [start, end), or (0, 0) when the window's
    context does not hold them all. SentencePiece gives a word-initial piece its leading space, and a bare
    "▁" piece the first character of the next piece: taking the *last* token that starts at or before
    `start` skips both. Characters no token covers (a zero-width space the normalizer dropped) are
    skipped at either end; tokens with empty spans are never chosen."""
    real = np.flatnonzero((offsets[:, 0] >= 0) & (offsets[:, 1] > offsets[:, 0]))
    if not len(real) or offsets[real[0], 0] > start or offsets[real[-1], 1] < end:
        return 0, 0
    k = np.flatnonzero(offsets[real, 0] <= start)[-1]
    if offsets[real[k], 1] <= start and k + 1 < len(real):  # the answer starts in a gap between tokens
        k += 1
    first = real[k]
    ends = real[(real >= first) & (offsets[real, 0] < end)]
    return int(first), int(ends[-1] if len(ends) else first)


def span_text(context: str, offsets: np.ndarray, first: int, last: int) -> str:
    """The context characters of tokens first..last, without the leading space a piece may carry.
    Characters right after the span that no token covers (a zero-width space the normalizer dropped, as
    in MLQA's "[1]" + U+200B) go with the span: annotators selected them with the text before."""
    stop = int(offsets[last, 1])
    following = offsets[last + 1:, 0]
    following = following[following >= stop]
    if len(following):
        stop = int(following[0])
    return context[offsets[first, 0]:stop].strip()


def best_span(scores: np.ndarray, offsets: np.ndarray, max_tokens: int) -> tuple[float, int, int]:
    """Highest start+end score over context spans of 1..max_tokens tokens: one vector op per length."""
    context = (offsets[:, 0] >= 0) & (offsets[:, 1] > offsets[:, 0])
    start = np.where(context, scores[0], -np.inf)
    end = np.where(context, scores[1], -np.inf)
    best, n = (-np.inf, 0, 0), len(start)
    for length in range(min(max_tokens, n)):
        total = start[:n - length] + end[length:]
        k = int(np.argmax(total))
        if total[k] > best[0]:
            best = (float(total[k]), k, k + length)
    return best


# ------------------------------------------------------------------------------------ format
class ExtractiveQA:
    """The QA task format. `max_length` is the window length QA needs (384, as in SQuAD/XTREME): encode
    uses it unless the run's max_length is larger (TrainConfig.max_length defaults to 128, which would
    cut most contexts into many windows). Questions are cut to `max_question_tokens` so that a window
    always has room for context plus the stride overlap."""

    head = "span"
    metric_names = ("exact_match", "f1")

    def __init__(self, max_length: int = 384, stride: int = 128, max_question_tokens: int = 64,
                 max_answer_tokens: int = 30):
        self.max_length = max_length
        self.stride = stride
        self.max_question_tokens = max_question_tokens
        self.max_answer_tokens = max_answer_tokens

    def _questions(self, tokenizer, questions: list[str], limit: int) -> list[str]:
        enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        return [q[:offs[limit - 1][1]] if len(offs) > limit else q
                for q, offs in zip(questions, enc["offset_mapping"])]

    def encode(self, tokenizer, frame: pd.DataFrame, max_length: int) -> Encoded:
        if not getattr(tokenizer, "is_fast", False):
            raise XlpromptError("Extractive QA needs a fast (Rust) tokenizer: it maps answers through token "
                                "character offsets, which slow tokenizers do not give.")
        if not len(frame):
            return Encoded([], [], {"example_index": np.zeros(0, np.int64), "example_ids": [], "offsets": []})
        length = max(max_length, self.max_length)
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        q_limit = min(self.max_question_tokens, length // 4)
        stride = min(self.stride, (length - q_limit - specials) // 2)
        questions = self._questions(tokenizer, [q.lstrip() for q in frame["question"]], q_limit)
        contexts = frame["context"].tolist()
        enc = tokenizer(questions, contexts, truncation="only_second", max_length=length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
        spans = [(s[0], s[0] + len(a[0])) for s, a in zip(frame["answer_starts"], frame["answers"])]
        token_ids, labels, example_index, offsets = [], [], [], []
        for i, example in enumerate(enc["overflow_to_sample_mapping"]):
            offs = np.asarray(enc["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
            is_context = np.array([s == 1 for s in enc.sequence_ids(i)])
            offs[~is_context] = -1  # character offsets only where they point into the context
            token_ids.append(list(enc["input_ids"][i]))
            labels.append(list(char_to_token_span(offs, *spans[example])))
            example_index.append(int(example))
            offsets.append(offs)
        ids = frame["id"].tolist()
        return Encoded(token_ids, labels, {"example_index": np.asarray(example_index, dtype=np.int64),
                                           "example_ids": [ids[e] for e in example_index],
                                           "offsets": offsets})

    def predict_answers(self, frame: pd.DataFrame, encoded: Encoded, outputs) -> list[str]:
        """The answer text predicted for every frame row ("" for a row without a window)."""
        best: dict[int, tuple[float, int, int, int]] = {}
        for i, scores in enumerate(outputs):
            score, first, last = best_span(np.asarray(scores), encoded.extra["offsets"][i], self.max_answer_tokens)
            example = int(encoded.extra["example_index"][i])
            if example not in best or score > best[example][0]:
                best[example] = (score, i, first, last)
        contexts = frame["context"].tolist()
        out = [""] * len(frame)
        for example, (score, i, first, last) in best.items():
            if np.isfinite(score):
                out[example] = span_text(contexts[example], encoded.extra["offsets"][i], first, last)
        return out

    def score(self, task, frame: pd.DataFrame, encoded: Encoded, outputs) -> dict:
        predictions = self.predict_answers(frame, encoded, outputs)
        return qa_metrics(predictions, frame["answers"].tolist(), frame["language"].tolist())


EXTRACTIVE_QA = ExtractiveQA()
