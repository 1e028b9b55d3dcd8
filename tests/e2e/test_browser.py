"""The staff pages in a real browser: headless Chromium (Debian's package), driven by Playwright,
against the real server (`manage.py serve`) on 127.0.0.1.

Playwright's own browser download is never used: it launches /usr/bin/chromium (or
CHROMIUM_PATH). `make test` installs Debian's chromium when it is missing; without it this
test fails saying so, unless SKIP_BROWSER_TESTS=1. Screenshots are kept in test-artifacts/.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY
from tests.support.processes import PROJECT_DIR
from tests.support.served import Served, manage

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", PROJECT_DIR / "test-artifacts"))
STAFF_USERNAME, STAFF_PASSWORD = "operator", "browser-test-password-1"
# The flags Chromium needs on a closed network, run as root, with no screen (without the networking ones it
# keeps trying to reach Google's hosts at every start).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("SKIP_BROWSER_TESTS") == "1":
        pytest.skip("SKIP_BROWSER_TESTS=1 and no Chromium found")
    pytest.fail("The browser test needs Chromium: `make test` installs Debian's `chromium` package, or set "
                "CHROMIUM_PATH (SKIP_BROWSER_TESTS=1 skips this test).")


@pytest.fixture(scope="module")
def staff_server(serve, fake_upstream_server: FakeUpstream) -> Served:
    served = serve(OPENAI_BASE_URL=fake_upstream_server.base_url, OPENAI_API_KEY=UPSTREAM_TEST_KEY)
    manage("createsuperuser", "--noinput", "--username", STAFF_USERNAME, "--email", "ops@example.com",
            env={**served.env, "DJANGO_SUPERUSER_PASSWORD": STAFF_PASSWORD})
    # Usage for the chart and the top keys: two chats through the API with a client key.
    for text in ("first chat for the dashboard", "second chat for the dashboard"):
        response = httpx.post(f"{served.base_url}/api/v1/chat", headers=served.headers(),
                              json={"user_message": text}, timeout=30)
        assert response.status_code == 200, response.text
    return served


@pytest.fixture
def page(staff_server: Served) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def log_in(page, served: Served) -> None:
    page.goto(f"{served.base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", STAFF_USERNAME)
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{served.base_url}/admin/")


def test_staff_user_sees_the_dashboard_chart_and_chats_in_the_playground(
    page, staff_server: Served, upstream: FakeUpstream
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_in(page, staff_server)

    page.click("#operator-pages a:has-text('Dashboard')")
    page.wait_for_url("**/admin/dashboard/")
    bars = page.locator("#usage-chart svg rect.bar")
    chart_box = page.locator("#usage-chart svg").bounding_box()
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    assert bars.count() >= 1
    assert chart_box is not None and chart_box["width"] > 300 and chart_box["height"] > 100
    assert bars.first.bounding_box()["height"] > 0
    assert page.inner_text("#today-requests") == "2"
    assert "e2e" in page.inner_text("#top-keys")

    page.goto(f"{staff_server.base_url}/admin/")
    page.click("#operator-pages a:has-text('Playground')")
    page.wait_for_url("**/admin/playground/")
    page.fill("#role", "You are terse.")
    page.fill("#message", "Hello from the browser test")
    # Upstream writes a word every 0.2 s. The answer's length, each time the transcript changes,
    # shows whether it arrived in pieces: a buffered response would be shown whole at once.
    upstream.enqueue(Behaviour(reply="one two three four five six", word_delay=0.2))
    page.evaluate("""() => {
        window.answerLengths = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('#transcript .turn.assistant .text');
            if (answers.length) window.answerLengths.push(answers[answers.length - 1].textContent.length);
        }).observe(document.getElementById('transcript'), {childList: true, subtree: true, characterData: true});
    }""")
    page.click("#send")
    answer = page.locator("#transcript .turn.assistant .text").last
    page.wait_for_function("document.querySelector('#turn-status').textContent.includes('tokens')")
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)

    streamed = answer.inner_text()
    assert streamed == "one two three four five six"
    lengths = page.evaluate("window.answerLengths")
    seen_in_part = {length for length in lengths if 0 < length < len(streamed)}
    assert len(seen_in_part) >= 3, lengths
    assert "gpt-4o-mini" in page.inner_text("#turn-status")
    # What the browser showed is what the server stored, under the staff user's playground key.
    stored = staff_server.rows(
        "SELECT m.content, k.name FROM chat_message m JOIN chat_chatsession s ON s.id = m.session_id "
        "JOIN chat_apikey k ON k.id = s.api_key_id WHERE m.role = 'assistant' ORDER BY m.id DESC LIMIT 1"
    )
    assert stored == [(streamed, f"Playground: {STAFF_USERNAME}")]
    # The session is now selected, so a reload shows the stored conversation.
    page.reload()
    assert page.locator("#transcript .turn.user .text").first.inner_text() == "Hello from the browser test"
