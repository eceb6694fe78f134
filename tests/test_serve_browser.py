"""The pages of `fromzero serve` in a real browser: headless Chromium driven by Selenium against the real server on
loopback (with an API key, which the pages send once it is typed in), a real SQLite vote file.

The chat page streams a multi-turn conversation and shows HTML a model wrote as text (nothing of it runs); the
arena streams two answers, takes one vote per battle (a double click stores one), reveals the models and starts
the next round; the leaderboard shows the ranking and the pair counts, and downloads the exports. Screenshots of
the three pages go to $FROMZERO_SCREENSHOTS or runs/screenshots/.
"""

import base64
import json
import os
import shutil
import sqlite3
import urllib.request
from pathlib import Path

import pytest
from serving import HTML_ANSWER, get, make_run, post, serving

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs chromium and chromedriver (`make test` installs them: apt-get install chromium chromium-driver)",
)

KEY = "browser-test-key"
WAIT_S = 60  # generous: the CI machine has two cores and the model runs on them
SHOTS = Path(os.environ.get("FROMZERO_SCREENSHOTS") or Path(__file__).resolve().parents[1] / "runs" / "screenshots")

# records what the page sends (every fetch's method, path, JSON body and Authorization header) in window.sent;
# window.loseAnswer = PATH makes the next request to PATH reach the server but its answer get lost on the way back
RECORD_FETCH = """
window.sent = [];
window.loseAnswer = null;
const original = window.fetch;
window.fetch = async function (path, opts) {
  opts = opts || {};
  let body = null;
  try { body = opts.body ? JSON.parse(opts.body) : null; } catch (e) {}
  window.sent.push({method: opts.method || "GET", path: String(path), body: body,
                    auth: (opts.headers || {})["Authorization"] || null});
  const response = await original.apply(this, arguments);
  if (window.loseAnswer === String(path)) {
    window.loseAnswer = null;
    throw new TypeError("Failed to fetch");
  }
  return response;
};
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = make_run(root)
    db = root / "votes.sqlite"
    with serving([run], db, "--max-tokens", "64", key=KEY) as base:
        yield base, db


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield browser
    finally:
        browser.quit()


def wait(driver, condition, what: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def by_id(driver, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def css(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def screenshot(driver, name: str) -> Path:
    """The whole page (not only the window) as SHOTS/name."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = SHOTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def open_page(driver, url: str) -> None:
    """Open a page with the API key set, as the chat test typed it in (so each test also runs alone)."""
    driver.get(url)
    if driver.execute_script("return localStorage.getItem('fromzero.apiKey')") != KEY:
        driver.execute_script("localStorage.setItem('fromzero.apiKey', arguments[0])", KEY)
        driver.get(url)


def no_page_errors(driver) -> None:
    """Nothing broke in the page: no script errors and no CSP violations in the console (the HTTP errors the tests
    cause, a 401 before the key is typed in and a 400, are logged as "network" and expected)."""
    bad = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not bad, bad


def text_of(driver, selector: str) -> str:
    return driver.execute_script("return document.querySelector(arguments[0]).textContent", selector)


def assert_inert(driver, container: str) -> None:
    """The model's HTML was shown as text: it made no elements and ran nothing."""
    assert driver.execute_script("return window.pwned === undefined")
    assert not css(driver, f"{container} b, {container} script, {container} img")


def sent(driver, path: str) -> list[dict]:
    return [r for r in driver.execute_script("return window.sent") if r["path"] == path]


def test_chat(server, driver):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    base, _ = server
    driver.get(base + "/chat")
    driver.execute_script("localStorage.clear()")
    driver.get(base + "/chat")
    # without the key the server says 401, and the page says so
    wait(driver, lambda d: "API key" in by_id(d, "status").text, "the missing API key is reported")
    assert "error" in by_id(driver, "status").get_attribute("class")
    by_id(driver, "api-key").send_keys(KEY, Keys.ENTER)
    wait(driver, lambda d: css(d, "#model option[value=sft]"), "the models are listed once the key is set")
    assert {o.get_attribute("value") for o in css(driver, "#model option")} == {"init", "sft"}
    driver.execute_script(RECORD_FETCH)

    Select(by_id(driver, "model")).select_by_value("sft")
    for name, value in (("temperature", "0"), ("top-p", "1"), ("max-tokens", "1000")):
        by_id(driver, name).clear()
        by_id(driver, name).send_keys(value)
    # an error the server answers (more tokens than it allows) is shown, and the message comes back to retry
    by_id(driver, "message").send_keys("Hello!", Keys.ENTER)  # Enter sends
    wait(driver, lambda d: "at most 64" in by_id(d, "status").text, "the server's error is shown")
    assert "error" in by_id(driver, "status").get_attribute("class")
    assert by_id(driver, "message").get_attribute("value") == "Hello!"
    by_id(driver, "max-tokens").clear()
    by_id(driver, "max-tokens").send_keys("48")
    by_id(driver, "message").send_keys(Keys.ENTER)
    wait(driver, lambda d: len(css(d, "#messages .msg.assistant.done:not(.failed)")) == 1, "the first answer finishes")
    assert len(css(driver, "#messages .msg")) == 2  # the failed try is gone
    assert text_of(driver, "#messages .msg.assistant .content") == HTML_ANSWER  # the HTML, as text
    assert css(driver, "#messages .msg.assistant .content")[0].text == HTML_ANSWER  # and shown as such
    assert_inert(driver, "#messages")
    assert not css(driver, "#messages .msg.error")
    assert [e.text for e in css(driver, "#messages .msg.user .content")] == ["Hello!"]
    first = sent(driver, "/v1/chat/completions")[-1]
    assert first["auth"] == f"Bearer {KEY}"
    assert first["body"] == {
        "model": "sft",
        "messages": [{"role": "user", "content": "Hello!"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "top_p": 1,
        "max_tokens": 48,
    }

    # a second turn, with a system prompt: the whole conversation goes with it
    by_id(driver, "system").send_keys("Answer in HTML.")
    by_id(driver, "message").send_keys("What is an LLM?")
    by_id(driver, "send").click()
    wait(driver, lambda d: len(css(d, "#messages .msg.assistant.done")) == 2, "the second answer finishes")
    assert len(css(driver, "#messages .msg.user")) == 2 and len(css(driver, "#messages .msg.assistant")) == 2
    assert not css(driver, "#messages .msg.error")
    assert_inert(driver, "#messages")
    second = sent(driver, "/v1/chat/completions")[-1]["body"]["messages"]
    assert second == [
        {"role": "system", "content": "Answer in HTML."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": HTML_ANSWER},
        {"role": "user", "content": "What is an LLM?"},
    ]
    assert "error" not in by_id(driver, "status").get_attribute("class")
    screenshot(driver, "chat.png")

    # Reset clears the page and the conversation: the next message goes alone (with the system prompt)
    by_id(driver, "reset").click()
    wait(driver, lambda d: not css(d, "#messages .msg"), "Reset clears the messages")
    by_id(driver, "message").send_keys("hi", Keys.ENTER)
    wait(driver, lambda d: len(css(d, "#messages .msg.assistant.done")) == 1, "the answer after Reset finishes")
    assert sent(driver, "/v1/chat/completions")[-1]["body"]["messages"] == [
        {"role": "system", "content": "Answer in HTML."},
        {"role": "user", "content": "hi"},
    ]
    no_page_errors(driver)


def battle_row(db: Path, battle_id: str) -> dict:
    """The vote on a battle, joined with the battle; there must be exactly one."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT v.*, b.messages, b.response_a, b.response_b, b.model_a, b.model_b, b.ckpt_a, "
            "b.ckpt_b, b.sampling, b.seed_a, b.seed_b, b.session_id AS battle_session "
            "FROM votes v JOIN battles b ON b.id = v.battle_id WHERE v.battle_id = ?",
            (battle_id,),
        ).fetchall()
    conn.close()
    assert len(rows) == 1, f"battle {battle_id} has {len(rows)} votes"
    return dict(rows[0])


def play_round(driver, prompt: str) -> None:
    """Ask, and wait until both answers have started (the vote buttons open then)."""
    from selenium.webdriver.common.keys import Keys

    by_id(driver, "prompt").send_keys(prompt, Keys.ENTER)
    wait(
        driver,
        lambda d: all(by_id(d, f"vote-{c}").is_enabled() for c in ("a", "b", "tie", "both-bad")),
        "the vote buttons open once both answers have started",
    )
    for s in "ab":
        assert "waiting" not in by_id(driver, f"answer-{s}").get_attribute("class")


def wait_reveal(driver) -> str:
    wait(driver, lambda d: by_id(d, "reveal").is_displayed() and by_id(d, "next").is_displayed(), "the reveal")
    return by_id(driver, "reveal").text


def test_arena(server, driver):
    base, db = server
    open_page(driver, base + "/arena")
    driver.execute_script(RECORD_FETCH)
    assert not by_id(driver, "battle").is_displayed()
    play_round(driver, "Say something.")
    better = "<i>A better answer</i>, written by hand."
    by_id(driver, "better").send_keys(better)
    # a double click in one go: the first click closes the buttons before the second lands
    driver.execute_script("const b = document.getElementById('vote-a'); b.click(); b.click();")
    assert not by_id(driver, "vote-b").is_enabled()
    reveal = wait_reveal(driver)
    assert len(sent(driver, "/api/vote")) == 1
    request = sent(driver, "/api/vote")[0]
    vote = request["body"]
    assert request["auth"] == f"Bearer {KEY}"
    assert vote["choice"] == "a" and vote["better"] == better and vote["session_id"]
    assert all(not by_id(driver, f"vote-{c}").is_enabled() for c in ("a", "b", "tie", "both-bad"))
    by_id(driver, "vote-a").click()  # a click on the closed button does nothing
    wait(driver, lambda d: by_id(d, "note-a").text and by_id(d, "note-b").text, "both answers finish")
    assert_inert(driver, ".answers")
    screenshot(driver, "arena.png")

    row = battle_row(db, vote["id"])
    assert row["choice"] == "a" and row["better"] == better
    assert json.loads(row["messages"]) == [{"role": "user", "content": "Say something."}]
    assert {row["model_a"], row["model_b"]} == {"init", "sft"}  # two served models, sides drawn at random
    assert reveal == f"Model A was {row['model_a']} and Model B was {row['model_b']}. You voted: A is better."
    assert by_id(driver, "model-a-name").text == row["model_a"] and by_id(driver, "model-b-name").text == row["model_b"]
    # what the page showed is what was stored
    assert row["response_a"] == text_of(driver, "#answer-a") and row["response_b"] == text_of(driver, "#answer-b")
    assert row["response_a"] and row["response_b"]
    assert len(row["ckpt_a"]) == 16 and len(row["ckpt_b"]) == 16 and row["ckpt_a"] != row["ckpt_b"]
    assert isinstance(json.loads(row["sampling"]), dict) and json.loads(row["sampling"])
    assert isinstance(row["seed_a"], int) and isinstance(row["seed_b"], int)
    session = driver.execute_script("return localStorage.getItem('fromzero.sessionId')")
    assert session and row["session_id"] == session and row["battle_session"] == session
    assert row["idempotency_key"] == vote["idempotency_key"] and len(row["idempotency_key"]) == 36
    assert row["created_at"]

    # the next round starts from a clean page
    by_id(driver, "next").click()
    wait(driver, lambda d: by_id(d, "prompt").is_enabled() and not by_id(d, "battle").is_displayed(), "a clean page")
    assert by_id(driver, "prompt").get_attribute("value") == "" and by_id(driver, "better").get_attribute("value") == ""
    assert text_of(driver, "#answer-a") == "" and text_of(driver, "#answer-b") == ""
    assert not by_id(driver, "reveal").is_displayed()
    play_round(driver, "How are you?")
    # the vote is stored but its answer is lost: the page says so and opens the buttons again ...
    driver.execute_script("window.loseAnswer = '/api/vote'")
    by_id(driver, "vote-tie").click()
    wait(driver, lambda d: "Network error" in by_id(d, "status").text, "the lost answer is reported")
    wait(driver, lambda d: by_id(d, "vote-tie").is_enabled(), "the buttons open again to retry")
    assert not by_id(driver, "reveal").is_displayed()
    # ... and the retry sends the same idempotency key: stored once, the server says it had it
    by_id(driver, "vote-tie").click()
    assert "You voted: a tie." in wait_reveal(driver)
    assert "already saved" in by_id(driver, "status").text
    votes = sent(driver, "/api/vote")
    assert len(votes) == 3 and votes[1]["body"] == votes[2]["body"] and votes[1]["body"]["id"] != vote["id"]
    assert votes[1]["body"]["idempotency_key"] != vote["idempotency_key"]
    row2 = battle_row(db, votes[1]["body"]["id"])
    assert row2["choice"] == "tie" and row2["better"] is None and row2["session_id"] == session
    assert row2["idempotency_key"] == votes[1]["body"]["idempotency_key"]
    assert json.loads(row2["messages"]) == [{"role": "user", "content": "How are you?"}]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 2
    conn.close()
    no_page_errors(driver)


def test_leaderboard(server, driver, downloads):
    base, db = server
    with sqlite3.connect(db) as conn:
        count = conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    conn.close()
    for prompt, choice in [("Hello!", "a"), ("hi", "tie")][count:]:  # run alone: two votes through the API
        status, battle = post(base + "/api/arena", {"messages": [{"role": "user", "content": prompt}]}, key=KEY)
        assert status == 200, battle
        assert post(base + "/api/vote", {"id": battle["id"], "choice": choice}, key=KEY)[0] == 200

    open_page(driver, base + "/leaderboard")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.loaded === '1'"), "the tables load")
    _, board = get(base + "/api/leaderboard", key=KEY)
    _, votes = get(base + "/api/votes", key=KEY)
    assert votes["total"] == 2 and by_id(driver, "total").text == "2"

    rows = css(driver, "#ranking tbody tr")
    assert [r.get_attribute("data-model") for r in rows] == [m["model"] for m in board["models"]]
    assert {r.get_attribute("data-model") for r in rows} == {"init", "sft"}
    for r, m in zip(rows, board["models"]):
        cells = [c.text for c in r.find_elements("css selector", "td")]
        assert cells == [
            str(board["models"].index(m) + 1),
            m["model"],
            f"{m['rating']:.1f}",
            f"{m['ci'][0]:.1f} – {m['ci'][1]:.1f}",
            str(m["votes"]),
            f"{m['wins']} / {m['losses']} / {m['ties']}",
        ]
        assert m["votes"] == 2 and m["ties"] == 1

    pairs = css(driver, "#pairs tbody tr")
    assert len(pairs) == 1
    (pair,) = votes["pairs"]
    x, y = pair["models"]
    assert [c.text for c in pairs[0].find_elements("css selector", "td")] == [
        x,
        y,
        "2",
        str(pair["wins"][x]),
        str(pair["wins"][y]),
        "1",
        "0",
    ]
    screenshot(driver, "leaderboard.png")

    # the downloads: fetched with the key, saved as files, the same bytes the API exports
    for button, name in (("download-preferences", "preferences.jsonl"), ("download-battles", "battles.jsonl")):
        by_id(driver, button).click()
        file = downloads / name
        wait(driver, lambda d: file.is_file() and not list(downloads.glob("*.crdownload")), f"{name} is downloaded")
        wait(driver, lambda d: file.stat().st_size > 0, f"{name} is written")
        request = urllib.request.Request(f"{base}/api/export/{name}", headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert file.read_bytes() == r.read()
    prefs = [json.loads(line) for line in (downloads / "preferences.jsonl").read_text().splitlines()]
    assert prefs and all(set(p) == {"prompt", "chosen", "rejected"} for p in prefs)
    battles = [json.loads(line) for line in (downloads / "battles.jsonl").read_text().splitlines()]
    assert sorted(b["winner"] for b in battles) == ["model_a", "tie"]
    assert "Downloaded battles.jsonl" in by_id(driver, "status").text
    no_page_errors(driver)
