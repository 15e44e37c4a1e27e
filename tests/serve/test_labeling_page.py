"""The labeling page in a real headless Chromium: label by keyboard, undo, skip, reload, nothing lost.

Chromium and chromedriver come from the system (Debian: ``apt-get install chromium
chromium-driver``); Selenium is pointed at them, so Selenium Manager never downloads a
browser. Without them the browser test is skipped locally and fails in CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from tests.quality.test_labeling import Logistic, pool_with
from tunesmith.quality.labeling import LabelingSession
from tunesmith.serve.labeling_page import create_labeling_app


def _browser_parts() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if chromium and driver:
        return chromium, driver
    message = (
        "the labeling page test needs selenium, chromium and chromedriver (apt-get install chromium chromium-driver)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver_path = _browser_parts()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


class Server:
    """The app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_label_by_keyboard_undo_skip_reload_and_nothing_is_lost(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pool, answers = pool_with(60, 10), tmp_path / "answers.jsonl"
    truth = pool.pop("truth")
    session = LabelingSession(Logistic(), pool, target="label", answers=answers, batch_size=5, review_share=0.0)
    keys = {c: str(i + 1) for i, c in enumerate(session.classes)}
    wait = WebDriverWait(browser, 10)

    def shown() -> str:
        return browser.find_element(By.ID, "card").get_attribute("data-row") or ""

    def press(key: str, *, until_not: str | None = None, until: str | None = None) -> str:
        browser.find_element(By.TAG_NAME, "body").send_keys(key)
        wait.until(lambda _: shown() and (shown() != until_not if until_not else shown() == until))
        return shown()

    with Server(create_labeling_app(session)) as url:
        browser.get(url)
        wait.until(lambda _: shown())
        labeled: dict[int, str] = {}
        for _ in range(3):
            row = int(shown())
            press(keys[truth[row]], until_not=str(row))
            labeled[row] = truth[row]
        last = row
        press("u", until=str(last))  # undo brings the last row back
        del labeled[last]
        press("s", until_not=str(last))  # and skip passes over it
        skipped = last
        for _ in range(2):  # the fifth event ends the batch: the model retrains meanwhile
            row = int(shown())
            browser.find_element(By.CSS_SELECTOR, f"button.class[data-label='{truth[row]}']").click()
            wait.until(lambda _, row=row: shown() and shown() != str(row))
            labeled[row] = truth[row]
        on_show = shown()
        wait.until(lambda _: browser.find_element(By.ID, "labeled").text == str(10 + len(labeled)))

        browser.refresh()
        wait.until(lambda _: shown())
        assert shown() == on_show  # the same row is on show after a reload
        wait.until(lambda _: browser.find_element(By.ID, "labeled").text == str(10 + len(labeled)))
        assert session.wait(10)
        wait.until(lambda _: browser.find_element(By.CSS_SELECTOR, "#curve svg").get_attribute("data-points") == "2")
        counts = browser.find_element(By.ID, "counts").text
        assert f"{len(labeled)} answered" in counts and "1 skipped" in counts

    # the server's state and the answers file agree with what was pressed
    got = session.labels()
    assert {r: got[r] for r in labeled} == labeled and skipped not in got.index
    assert session.progress()["skipped"] == 1
    session.close()
    written = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    steps = [(e["event"], e.get("row")) for e in written if e["event"] != "score"]
    assert [s for s, _ in steps] == ["label"] * 3 + ["undo", "skip", "label", "label"]
    assert {r for s, r in steps if s == "label"} - {last} == set(labeled)
    again = LabelingSession(Logistic(), pool, target="label", answers=answers, batch_size=5, background=False)
    assert again.labels().equals(got)
    again.close()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    pool = pool_with(30, 8).drop(columns=["truth"])
    session = LabelingSession(Logistic(), pool, target="label", answers=tmp_path / "a.jsonl", background=False)
    with TestClient(create_labeling_app(session), base_url="http://127.0.0.1") as test_client:
        yield test_client
    session.close()


def test_the_api_refuses_bad_requests_with_a_clear_message(client: TestClient) -> None:
    http = client
    page = http.get("/")
    assert page.status_code == 200 and "<script>" in page.text
    assert not re.search(r"(src|href)=[\"']?https?:", page.text)  # nothing from elsewhere
    assert "default-src 'none'" in page.headers["content-security-policy"]
    state = http.get("/api/next").json()
    row = state["row"]["row"]
    assert state["progress"]["classes"] == ["no", "yes"]
    other = next(r for r in range(8, 30) if r != row)
    for body, status, message in (
        ({"row": 999, "label": "yes"}, 404, "row 999 is not in the pool"),
        ({"row": other, "label": "yes"}, 409, f"row {other} is not the row on show"),
        ({"row": row, "label": "maybe"}, 400, "'maybe' is not one of the classes"),
        ({"row": row}, 400, "bad request body"),
    ):
        response = http.post("/api/answer", json=body)
        assert response.status_code == status and message in response.json()["error"]
    assert http.post("/api/undo", json={}).status_code == 409
    done = http.post("/api/answer", json={"row": str(row), "label": "yes"}).json()
    assert done["row"]["row"] != row and done["progress"]["labeled"] == 9
    assert http.post("/api/undo", json={}).json()["undone"] == row
    assert http.post("/api/skip", json={"row": row}).json()["progress"]["skipped"] == 1
    assert http.get("/api/progress").json()["skipped"] == 1
    assert http.get("/api/image/1").status_code == 404  # no image column
    foreign = http.get("/api/next", headers={"host": "attacker.example:8765"})
    assert foreign.status_code == 421


def test_images_are_served_only_from_under_the_root(tmp_path: Path) -> None:
    import pandas as pd

    root = tmp_path / "data"
    root.mkdir()
    (root / "a.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "secret.txt").write_text("secret")
    pool = pd.DataFrame({"path": ["a.png", "../secret.txt"], "label": ["cat", "dog"]})
    session = LabelingSession(Logistic(), pool, target="label", answers=tmp_path / "a.jsonl", image_column="path",
                              root=root, initial_fit=False)  # fmt: skip
    with TestClient(create_labeling_app(session), base_url="http://127.0.0.1") as http:
        assert http.get("/api/image/0").content == b"\x89PNG fake"
        outside = http.get("/api/image/1")
        assert outside.status_code == 404 and "outside" in outside.json()["error"]
        assert http.get("/api/image/..%2Fsecret.txt").status_code == 404
    session.close()


def test_another_site_cannot_label_skip_or_undo(client: TestClient, tmp_path: Path) -> None:
    http, answers = client, tmp_path / "a.jsonl"
    row = http.get("/api/next").json()["row"]["row"]
    assert http.post("/api/answer", json={"row": row, "label": "yes"}).status_code == 200
    before = answers.read_bytes()
    json_body = {"content": b"{}", "headers": {"content-type": "application/json"}}
    for path in ("/api/undo", "/api/keep-going", "/api/skip"):
        for headers, status in (
            # fetch(..., {method: "POST", mode: "no-cors"}) from a page the labeler has open elsewhere
            ({"origin": "https://evil.example", "sec-fetch-site": "cross-site"}, 403),
            ({"origin": "https://evil.example"}, 403),
            ({"origin": "null"}, 403),  # a sandboxed frame or a local file
            ({"origin": "http://127.0.0.1:9999"}, 403),  # another server on this machine
            ({"origin": "http://127.0.0.1.evil.example"}, 403),
            ({"sec-fetch-site": "cross-site"}, 403),
            ({"sec-fetch-site": "same-site"}, 403),
        ):
            response = http.post(path, **{**json_body, "headers": {**json_body["headers"], **headers}})
            assert response.status_code == status and "only this server's own page" in response.json()["error"]
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None):
            # what a page elsewhere can send without a CORS preflight, or no body at all
            headers = {"content-type": content_type} if content_type else {}
            response = http.post(path, content=b"{}" if content_type else None, headers=headers)
            assert response.status_code == 415 and "application/json" in response.json()["error"]
    assert answers.read_bytes() == before  # nothing written
    assert http.get("/api/progress").json()["answered"] == 1
    # the page's own requests: its origin (as the browser spells it) and a JSON body, {} when there is none
    for origin in ("http://127.0.0.1", "http://127.0.0.1:80", "HTTP://127.0.0.1"):
        own = {"origin": origin, "sec-fetch-site": "same-origin"}
        assert http.post("/api/undo", json={}, headers=own).json()["undone"] == row
        assert http.post("/api/answer", json={"row": row, "label": "no"}, headers=own).status_code == 200
    assert http.post("/api/keep-going", json={}, headers={"sec-fetch-site": "same-origin"}).status_code == 200
    assert (
        http.post("/api/undo", json={}, headers={"content-type": "application/json; charset=utf-8"}).status_code == 200
    )


def test_only_raster_images_are_served_and_sandboxed(tmp_path: Path) -> None:
    import pandas as pd

    root = tmp_path / "data"
    root.mkdir()
    raster = {
        "a.png": (b"\x89PNG\r\n\x1a\n rest", "image/png"), "b.jpg": (b"\xff\xd8\xff\xe0 rest", "image/jpeg"),
        "c.gif": (b"GIF89a rest", "image/gif"), "d.webp": (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        "e.bmp": (b"BM rest", "image/bmp"), "png-named.svg": (b"\x89PNG\r\n\x1a\n", "image/png"),
    }  # fmt: skip
    script = {
        "f.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "g.html": b"<script>fetch('/api/undo', {method: 'POST'})</script>",
        "h.png": b"<html><script>alert(1)</script></html>",  # a page named as an image
        "i.txt": b"RIFF but not WEBP",
    }
    for name, (content, _) in raster.items():
        (root / name).write_bytes(content)
    for name, content in script.items():
        (root / name).write_bytes(content)
    names = [*raster, *script]
    pool = pd.DataFrame({"path": names, "label": ["cat", "dog"] * (len(names) // 2)})
    session = LabelingSession(Logistic(), pool, target="label", answers=tmp_path / "a.jsonl", image_column="path",
                              root=root, initial_fit=False)  # fmt: skip
    with TestClient(create_labeling_app(session), base_url="http://127.0.0.1") as http:
        for row, (name, (content, media)) in enumerate(raster.items()):
            response = http.get(f"/api/image/{row}")
            assert response.status_code == 200 and response.content == content, name
            assert response.headers["content-type"] == media
            assert response.headers["content-security-policy"] == "sandbox"
            assert response.headers["x-content-type-options"] == "nosniff"
        for row, name in enumerate(script, len(raster)):
            response = http.get(f"/api/image/{row}")
            assert response.status_code == 415, name
            assert "is not a PNG, JPEG, GIF, WebP or BMP file" in response.json()["error"]
            assert b"<script>" not in response.content
    session.close()
