"""A synthetic text world with a known gold reward and a spurious feature.

Every prompt asks about one topic (``question about cooking :``). A response is a short sequence
of words drawn from five kinds:

* on-topic words (``recipe oven flour`` for cooking): gold +1 each;
* helpful connectives (``because example step``): gold +0.5 each;
* error words (``wrong unsure mistake``): gold -1.5 each;
* off-topic words (another topic's words): gold -0.5 each;
* neutral words (``the it is``) and **filler words** (``very really basically``): gold 0.

The gold reward reads only the content words. The filler words are the spurious feature: they
are worthless to the gold reward, but a response has a bounded number of words, so filler
crowds content out (more filler, less content, lower gold), exactly like padding a real answer
with verbiage. In the *training pairs* the filler count is made to correlate with the
preference label by selecting pairs (a pair whose chosen response has more filler is kept more
often), the way length correlates with preference in real preference data. The labels stay the
gold comparison of the very texts in the pair, with a fraction (25%) flipped at random.

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


@dataclass
class WorldConfig:
    """Parameters of the response generator."""

    min_words: int = 8  # response length is uniform in [min_words, max_words]
    max_words: int = 20
    filler_a: float = 0.5  # filler fraction ~ filler_max * Beta(filler_a, filler_b): mostly small,
    filler_b: float = 3.0  # a long tail of very padded responses (where best-of-n goes looking)
    filler_max: float = 0.9


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
    """One response per entry of ``topics`` (topic indices)."""
    topics = np.asarray(topics, dtype=np.int64)
    n = topics.shape[0]
    names = list(TOPICS)
    topic_words = [TOPICS[name].split() for name in names]
    quality = rng.standard_normal(n)
    filler_fraction = config.filler_max * rng.beta(config.filler_a, config.filler_b, size=n)
    lengths = rng.integers(config.min_words, config.max_words + 1, size=n)
    probs = _kind_probabilities(quality, filler_fraction)
    words: List[List[str]] = []
    gold = np.zeros(n)
    filler = np.zeros(n, dtype=np.int64)
    cumulative = probs.cumsum(axis=1)
    for i in range(n):
        m = int(lengths[i])
        # inverse-CDF draw of the word kinds, then one integer per word to pick the word itself
        kinds = np.minimum((rng.random(m)[:, None] > cumulative[i][None, :]).sum(axis=1), len(KINDS) - 1)
        picks = rng.integers(0, 1 << 30, size=(m, 2))
        row = []
        for k, (pick, other_pick) in zip(kinds.tolist(), picks.tolist()):
            kind = KINDS[k]
            if kind == "on_topic":
                row.append(topic_words[topics[i]][pick % 6])
            elif kind == "off_topic":
                other = (topics[i] + 1 + other_pick % (len(names) - 1)) % len(names)
                row.append(topic_words[other][pick % 6])
            else:
                pool = _WORDS_OF_KIND[kind]
                row.append(pool[pick % len(pool)])
            gold[i] += GOLD_WEIGHTS.get(kind, 0.0)
        filler[i] = int((kinds == KINDS.index("filler")).sum())
        words.append(row)
    return Responses(topic=topics, words=words, gold=gold, filler=filler, length=lengths.astype(np.int64))


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


@dataclass
class PreferencePairs:
    """P preference pairs for one prompt each: chosen / rejected responses and how they were made."""

    chosen: Responses
    rejected: Responses
    flipped: np.ndarray  # [P] bool: the label disagrees with the gold reward (label noise)


def preference_pairs(
    rng: np.random.Generator,
    count: int,
    n_topics: int,
    flip: float = 0.25,
    keep_if_more_filler: float = 1.0,
    keep_otherwise: float = 0.25,
    config: WorldConfig = WorldConfig(),
) -> PreferencePairs:
    """``count`` labelled pairs in which the filler count correlates with the label.

    Two responses to the same prompt; the gold reward decides which is chosen (a tie goes to a
    coin), then the label is flipped with probability ``flip``. The pair is kept with
    probability ``keep_if_more_filler`` when the chosen response has more filler words than the
    rejected one, ``keep_otherwise`` otherwise (the selection that makes filler look good).
    """
    chosen_parts, rejected_parts, flipped_parts = [], [], []
    have = 0
    while have < count:
        batch = max(256, 2 * (count - have))
        topics = rng.integers(n_topics, size=batch)
        a = generate(rng, topics, config)
        b = generate(rng, topics, config)
        a_wins = (a.gold > b.gold) | ((a.gold == b.gold) & (rng.random(batch) < 0.5))
        flipped = rng.random(batch) < flip
        a_chosen = a_wins ^ flipped
        filler_chosen = np.where(a_chosen, a.filler, b.filler)
        filler_rejected = np.where(a_chosen, b.filler, a.filler)
        keep_prob = np.where(filler_chosen > filler_rejected, keep_if_more_filler, keep_otherwise)
        keep = np.flatnonzero(rng.random(batch) < keep_prob)[: count - have]
        chosen_index = np.where(a_chosen[keep], keep, keep + batch)
        rejected_index = np.where(a_chosen[keep], keep + batch, keep)
        both = _concat(a, b)
        chosen_parts.append(both.subset(chosen_index))
        rejected_parts.append(both.subset(rejected_index))
        flipped_parts.append(flipped[keep])
        have += keep.size
    return PreferencePairs(
        chosen=_concat(*chosen_parts), rejected=_concat(*rejected_parts), flipped=np.concatenate(flipped_parts),
    )


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
