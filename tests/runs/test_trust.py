"""Every model folder is a trust boundary: the tampered corpus of tests/tamper.py, loaded as an attacker hopes.

Each case must be refused with an ArtifactError (one ``error:`` line from the CLI), run no
code from the folder (no canary), read and write nothing in the corpus's ``outside/`` folder
(inotify), and answer within the time limit. The default run loads every case through the
Python entry (in a fork of this process: no imports to pay, yet isolated) and one case per
category through the CLI; ``-m slow`` runs every case through every entry in fresh
processes, the server's hot reload included.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tamper import (
    CASE_NAMES,
    CATEGORIES,
    ENTRIES,
    Corpus,
    Outcome,
    Watch,
    Zygote,
    build_corpus,
    restore_outside,
    run_case,
    run_reloads,
    snapshot,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watch on outside/ uses inotify")

# One case per category through the CLI: (case, entry).
CLI_SUBSET = {
    "code": ("code_tokenizer_auto_map", "predict"),
    "outside_read": ("read_backbone_absolute", "predict"),
    "outside_write": ("write_adapter_unlink_outside", "personalize"),
    "resources": ("res_fifo_backbone_config", "evaluate"),
    "crash": ("crash_lightgbm_malformed", "predict"),
    "traceback": ("tb_meta_not_an_object", "predict"),
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("tamper"))


@pytest.fixture(scope="session")
def zygote(corpus: Corpus) -> Iterator[Zygote]:
    with Zygote(corpus) as z:
        yield z


def _explain(out: Outcome, what: str) -> str:
    parts = [f"{out.case} via {out.entry} ({what}): {', '.join(out.failures)}"]
    if out.error:
        parts.append(f"last line: {out.error}")
    if out.read_events:
        parts.append(f"reads: {out.read_events[:4]}")
    if out.write_events or out.outside_changed:
        parts.append(f"writes: {out.write_events[:4]} changed: {out.outside_changed[:4]}")
    if out.detail:
        parts.append(out.detail[-600:])
    return "\n".join(parts)


# --- the harness can see what it claims to see -------------------------------------------------


def test_the_watch_sees_reads_writes_and_the_canary(corpus: Corpus) -> None:
    restore_outside(corpus)
    before = snapshot(corpus.outside)
    with Watch(corpus.outside) as watch:
        pid = os.fork()
        if pid == 0:  # a child that does what an attack would
            try:
                (corpus.outside / "secret.txt").read_bytes()
                (corpus.outside / "hf_backbone" / "config.json").read_bytes()
                corpus.canary.write_text("ran")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    assert any(e.startswith("secret.txt") for e in watch.reads), watch.reads
    assert any(e.startswith("hf_backbone/config.json") for e in watch.reads), watch.reads
    assert any(e.startswith("CANARY") for e in watch.writes), watch.writes
    assert snapshot(corpus.outside) != before
    restore_outside(corpus)
    assert snapshot(corpus.outside) == before and not corpus.canary.exists()


def test_good_folders_load_cleanly(corpus: Corpus, zygote: Zygote) -> None:
    """The harness tells a load from a refusal: every good folder loads, touching nothing outside."""
    for case in corpus.good.values():
        out = zygote.run(case)
        assert out.loaded and not out.refused, _explain(out, case.what)
        assert not out.outside_reads and not out.code_executed and not out.outside_changed, _explain(out, case.what)


# --- every case, Python entry -------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_python_load_refuses(corpus: Corpus, zygote: Zygote, name: str) -> None:
    case = corpus.case(name)
    out = zygote.run(case)
    assert out.ok, _explain(out, case.what)


# --- one case per category, CLI -----------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_cli_refuses_with_one_error_line(corpus: Corpus, category: str) -> None:
    name, entry = CLI_SUBSET[category]
    case = corpus.case(name)
    assert case.category == category and entry in case.entries
    out = run_case(case, entry, corpus)
    assert out.ok, _explain(out, case.what)


# --- the full sweep (slow) ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("entry", [e for e in ENTRIES if e != "reload"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_entry_refuses(corpus: Corpus, name: str, entry: str) -> None:
    case = corpus.case(name)
    if entry not in case.entries:
        pytest.skip(f"{case.kind} folders are not loaded by {entry}")
    out = run_case(case, entry, corpus)
    assert out.ok, _explain(out, case.what)


@pytest.fixture(scope="session")
def reloads(corpus: Corpus) -> dict[str, Outcome]:
    return {o.case: o for o in run_reloads(corpus.cases, corpus)}


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_reload_refuses_and_keeps_serving(corpus: Corpus, reloads: dict[str, Outcome], name: str) -> None:
    case = corpus.case(name)
    if "reload" not in case.entries:
        pytest.skip(f"{case.kind} folders are not hot-reloaded")
    out = reloads[name]
    assert out.ok, _explain(out, case.what)


def test_corpus_paths_stay_under_its_root(corpus: Corpus) -> None:
    for case in corpus.cases:
        assert Path(case.folder).is_relative_to(corpus.root)
    assert corpus.canary.parent == corpus.outside
