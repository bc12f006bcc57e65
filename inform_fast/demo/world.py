"""A synthetic text world with a known gold reward and a spurious feature.

Every prompt asks about one topic (``question about cooking :``). A response is a fixed budget of
words (12 by default) of six kinds:

* on-topic words (``recipe oven flour`` for cooking): gold +1 each;
* helpful connectives (``because example step``): gold +0.5 each;
* error words (``wrong unsure mistake``): gold -1.5 each;
* off-topic words (another topic's words): gold -0.5 each;
* neutral words (``the it is``) and **filler words** (``very really basically``): gold 0.

The gold reward reads only the content words. Filler is the spurious feature: worthless to the
gold reward, and since the word budget is fixed and the base policy is competent on average
(``quality_mean`` > 0: a content word is worth more than nothing on average), each filler word
takes the place of a content word that was worth something. Most responses carry a little filler;
a small share (``padded_share``) are *padded*, most of their words filler, the way a policy
sometimes rambles.

The preference labels come from a **biased annotator** (``label_model="bradley_terry"``): it
values a response at ``gold + filler_bias * filler`` and prefers A to B with probability
``sigmoid((u_A - u_B) / label_temperature)``, the Bradley-Terry model with the verbosity bias of
real raters. The temperature is the label noise (a close pair is a coin flip, a clear one is
not). The previous world's labels (``label_model="selected"``: the gold comparison, a share of
labels flipped at random, pairs whose chosen response has more filler kept more often) remain
for comparisons; docs/demo.md has the measurements that made us change it.

Everything is drawn from a ``numpy.random.Generator``; the same seed gives the same world.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

TOPICS = {
    "cooking": "recipe oven flour simmer spice dough",
    "python": "function loop import variable class module",
    "travel": "flight hotel passport luggage ticket station",
    "garden": "soil seed water prune compost sunlight",
    "finance": "budget savings interest loan invest tax",
    "health": "sleep exercise protein hydrate stretch rest",
    "music": "chord melody rhythm tempo scale guitar",
    "space": "orbit planet rocket gravity telescope comet",
}
HELPFUL = "because example step first then check explain specifically".split()
ERRORS = "wrong unsure error confused mistake nonsense broken useless".split()
FILLER = "very really basically actually truly honestly definitely literally".split()
NEUTRAL = "the a it is this that and to of you can will".split()
PROMPT_WORDS = ["question", "about", ":"]

# gold weight of each word kind (filler and neutral: 0)
GOLD_WEIGHTS = {"on_topic": 1.0, "helpful": 0.5, "error": -1.5, "off_topic": -0.5}
KINDS = ("on_topic", "helpful", "error", "off_topic", "neutral", "filler")
_WORDS_OF_KIND = {"helpful": HELPFUL, "error": ERRORS, "neutral": NEUTRAL, "filler": FILLER}
# position of each word kind after the topic words in response_vocabulary() (helpful, error, filler, neutral)
_KIND_OFFSETS = {"helpful": 0, "error": len(HELPFUL), "filler": len(HELPFUL) + len(ERRORS),
                 "neutral": len(HELPFUL) + len(ERRORS) + len(FILLER)}


def vocabulary() -> List[str]:
    """All words of the world (prompt words, topic names, every response word), in a fixed order."""
    words = list(PROMPT_WORDS) + list(TOPICS)
    for topic_words in TOPICS.values():
        words += topic_words.split()
    return words + HELPFUL + ERRORS + FILLER + NEUTRAL


@dataclass
class Responses:
    """A batch of N generated responses (one per row), with their prompts and gold rewards."""

    topic: np.ndarray  # [N] int, index into list(TOPICS)
    words: List[List[str]]  # N word lists (the response text is " ".join(words))
    gold: np.ndarray  # [N] float64 gold reward
    filler: np.ndarray  # [N] int, number of filler words (the spurious feature)
    length: np.ndarray  # [N] int, number of words

    def texts(self) -> List[str]:
        """Prompt + response, one string per row: ``question about TOPIC : w1 w2 ...``."""
        names = list(TOPICS)
        return [f"question about {names[t]} : " + " ".join(w) for t, w in zip(self.topic.tolist(), self.words)]

    def subset(self, index: np.ndarray) -> "Responses":
        index = np.asarray(index)
        return Responses(
            topic=self.topic[index], words=[self.words[i] for i in index.tolist()],
            gold=self.gold[index], filler=self.filler[index], length=self.length[index],
        )


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the response generator."""

    min_words: int = 12  # response length is uniform in [min_words, max_words]
    max_words: int = 12
    quality_mean: float = 1.0  # a response's competence ~ N(quality_mean, 1) (sets its mix of good and bad words)
    filler_a: float = 0.5  # filler fraction of an ordinary response ~ filler_max * Beta(filler_a, filler_b)
    filler_b: float = 8.0
    filler_max: float = 0.25
    padded_share: float = 0.01  # share of padded responses: filler fraction ~ Uniform(padded_low, padded_high)
    padded_low: float = 0.6
    padded_high: float = 0.9


def _kind_probabilities(quality: np.ndarray, filler_fraction: np.ndarray) -> np.ndarray:
    """[N, 6] probabilities of each word kind (order ``KINDS``) for each response."""
    good = 1.0 / (1.0 + np.exp(-quality))  # in (0, 1): how competent the response is
    content = np.stack([
        0.35 * good,  # on_topic
        0.15 * good,  # helpful
        0.20 * (1.0 - good),  # error
        0.05 + 0.0 * good,  # off_topic
        0.25 + 0.0 * good,  # neutral
    ], axis=1)
    content /= content.sum(axis=1, keepdims=True)
    # filler takes its fraction of the positions; everything else shrinks in proportion
    return np.concatenate([content * (1.0 - filler_fraction)[:, None], filler_fraction[:, None]], axis=1)


def generate(rng: np.random.Generator, topics: Sequence[int], config: WorldConfig = WorldConfig()) -> Responses:
    """One response per entry of ``topics`` (topic indices), drawn in whole arrays."""
    topics = np.asarray(topics, dtype=np.int64)
    n, width = topics.shape[0], config.max_words
    quality = config.quality_mean + rng.standard_normal(n)
    light = config.filler_max * rng.beta(config.filler_a, config.filler_b, size=n)
    padded = rng.random(n) < config.padded_share
    filler_fraction = np.where(padded, rng.uniform(config.padded_low, config.padded_high, size=n), light)
    lengths = rng.integers(config.min_words, config.max_words + 1, size=n)
    cumulative = _kind_probabilities(quality, filler_fraction).cumsum(axis=1)  # [n, 6]
    # inverse-CDF draw of each position's word kind, then two integers to pick the word itself
    kinds = np.minimum((rng.random((n, width))[:, :, None] > cumulative[:, None, :]).sum(axis=2), len(KINDS) - 1)  # [n, W]
    picks = rng.integers(0, 1 << 30, size=(n, width, 2))
    ids = _word_ids(kinds, picks, topics)  # [n, W] indices into response_vocabulary()
    valid = np.arange(width)[None, :] < lengths[:, None]
    kind_gold = np.array([GOLD_WEIGHTS.get(kind, 0.0) for kind in KINDS])
    gold = np.where(valid, kind_gold[kinds], 0.0).sum(axis=1)
    filler = (valid & (kinds == KINDS.index("filler"))).sum(axis=1).astype(np.int64)
    vocab = response_vocabulary()
    words = [[vocab[i] for i in row[:m]] for row, m in zip(ids.tolist(), lengths.tolist())]
    return Responses(topic=topics, words=words, gold=gold, filler=filler, length=lengths.astype(np.int64))


def _word_ids(kinds: np.ndarray, picks: np.ndarray, topics: np.ndarray) -> np.ndarray:
    """[n, W] indices into ``response_vocabulary()`` of words of the given kinds [n, W]: ``picks``
    [n, W, 2] chooses the word within its kind (and, for off-topic words, the other topic)."""
    n_topics, per_topic = len(TOPICS), len(next(iter(TOPICS.values())).split())
    pick, other_pick = picks[..., 0], picks[..., 1]
    topic = topics[:, None]
    other = (topic + 1 + other_pick % (n_topics - 1)) % n_topics
    offset = n_topics * per_topic  # the topic words come first in response_vocabulary()
    ids = np.empty(kinds.shape, dtype=np.int64)
    for k, kind in enumerate(KINDS):
        if kind == "on_topic":
            choice = topic * per_topic + pick % per_topic
        elif kind == "off_topic":
            choice = other * per_topic + pick % per_topic
        else:
            pool = _WORDS_OF_KIND[kind]
            choice = offset + _KIND_OFFSETS[kind] + pick % len(pool)
        ids = np.where(kinds == k, choice, ids)
    return ids


def gold_reward(topic: int, words: Sequence[str]) -> float:
    """The gold reward of one response, recomputed from its words (used by tests as an oracle)."""
    names = list(TOPICS)
    own = set(TOPICS[names[topic]].split())
    other = {w for name in names if name != names[topic] for w in TOPICS[name].split()}
    helpful, errors = set(HELPFUL), set(ERRORS)
    total = 0.0
    for word in words:
        if word in own:
            total += GOLD_WEIGHTS["on_topic"]
        elif word in other:
            total += GOLD_WEIGHTS["off_topic"]
        elif word in helpful:
            total += GOLD_WEIGHTS["helpful"]
        elif word in errors:
            total += GOLD_WEIGHTS["error"]
    return total


def kind_counts(responses: Responses) -> np.ndarray:
    """[N, 6] float64: how many words of each kind (order ``KINDS``) each response holds, on-topic
    and off-topic relative to its own prompt's topic."""
    names = list(TOPICS)
    kind_of = {word: KINDS.index(kind) for kind, pool in _WORDS_OF_KIND.items() for word in pool}
    topic_of = {word: t for t, name in enumerate(names) for word in TOPICS[name].split()}
    on, off = KINDS.index("on_topic"), KINDS.index("off_topic")
    counts = np.zeros((len(responses.words), len(KINDS)))
    for row, (topic, words) in enumerate(zip(responses.topic.tolist(), responses.words)):
        for word in words:
            kind = kind_of.get(word)
            if kind is None:
                kind = on if topic_of[word] == topic else off
            counts[row, kind] += 1
    return counts


def response_vocabulary() -> List[str]:
    """Every word a response may contain, in a fixed order without repeats: each topic's words,
    then the helpful, error, filler and neutral words (the prompt words and topic names are not
    response words)."""
    words: List[str] = []
    for topic_words in TOPICS.values():
        words += topic_words.split()
    return words + HELPFUL + ERRORS + FILLER + NEUTRAL


def gold_weight_table() -> np.ndarray:
    """[topics, V] float64: the gold reward one word of ``response_vocabulary()`` adds to a response
    to each topic (``gold_reward`` is the sum of these terms over the words), for vectorised gold."""
    vocab = response_vocabulary()
    return np.array([[gold_reward(topic, [word]) for word in vocab] for topic in range(len(TOPICS))])


def is_valid_response(words: Sequence[str], config: WorldConfig = WorldConfig()) -> bool:
    """True when ``words`` could be a response of this world: min_words..max_words words, each a
    response word."""
    allowed = set(response_vocabulary())
    return config.min_words <= len(words) <= config.max_words and all(word in allowed for word in words)


LABEL_MODELS = ("bradley_terry", "selected")


@dataclass
class PreferencePairs:
    """P preference pairs for one prompt each: chosen / rejected responses and how they were made."""

    chosen: Responses
    rejected: Responses
    against_gold: np.ndarray  # [P] bool: the chosen response has the lower gold reward (label noise or bias)


def preference_pairs(
    rng: np.random.Generator,
    count: int,
    n_topics: int,
    label_model: str = "bradley_terry",
    filler_bias: float = 0.0,
    temperature: float = 0.0,
    flip: float = 0.0,
    keep_otherwise: float = 1.0,
    config: WorldConfig = WorldConfig(),
) -> PreferencePairs:
    """``count`` labelled pairs (two responses to the same prompt each).

    ``bradley_terry``: the annotator's utility is ``gold + filler_bias * filler``; A is chosen
    with probability ``sigmoid((u_A - u_B) / temperature)``, or whenever ``u_A > u_B`` with
    ``temperature`` 0 (a tie goes to a coin). ``filler_bias`` 0 and ``temperature`` 0 give the
    gold comparison itself (the held-out pairs).

    ``selected`` (the previous world): the gold reward decides (a tie goes to a coin), the label
    is flipped with probability ``flip``, and a pair is kept with probability 1 when the chosen
    response has more filler words than the rejected one, ``keep_otherwise`` otherwise.
    """
    if label_model not in LABEL_MODELS:
        raise ValueError(f"label_model: expected one of {LABEL_MODELS}, got {label_model!r}")
    chosen_parts, rejected_parts = [], []
    have = 0
    while have < count:
        batch = count - have if label_model == "bradley_terry" else max(256, 2 * (count - have))
        topics = rng.integers(n_topics, size=batch)
        a = generate(rng, topics, config)
        b = generate(rng, topics, config)
        if label_model == "bradley_terry":
            gap = (a.gold + filler_bias * a.filler) - (b.gold + filler_bias * b.filler)
            if temperature > 0:
                a_chosen = rng.random(batch) < 1.0 / (1.0 + np.exp(-gap / temperature))
            else:
                a_chosen = (gap > 0) | ((gap == 0) & (rng.random(batch) < 0.5))
            keep = np.arange(batch)
        else:
            a_wins = (a.gold > b.gold) | ((a.gold == b.gold) & (rng.random(batch) < 0.5))
            a_chosen = a_wins ^ (rng.random(batch) < flip)
            more_filler = np.where(a_chosen, a.filler > b.filler, b.filler > a.filler)
            keep_prob = np.where(more_filler, 1.0, keep_otherwise)
            keep = np.flatnonzero(rng.random(batch) < keep_prob)[: count - have]
        both = _concat(a, b)
        chosen_parts.append(both.subset(np.where(a_chosen[keep], keep, keep + batch)))
        rejected_parts.append(both.subset(np.where(a_chosen[keep], keep + batch, keep)))
        have += keep.size
    chosen, rejected = _concat(*chosen_parts), _concat(*rejected_parts)
    return PreferencePairs(chosen=chosen, rejected=rejected, against_gold=chosen.gold < rejected.gold)


def _concat(*parts: Responses) -> Responses:
    return Responses(
        topic=np.concatenate([p.topic for p in parts]),
        words=[w for p in parts for w in p.words],
        gold=np.concatenate([p.gold for p in parts]),
        filler=np.concatenate([p.filler for p in parts]),
        length=np.concatenate([p.length for p in parts]),
    )


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over ``vocabulary()`` with <pad>/<unk>/<bos>/<eos>,
    built offline with the ``tokenizers`` library (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"])}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
    )
