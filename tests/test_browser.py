"""The chat page in a real headless Chromium (Debian `chromium`, driven by Playwright): load the page
from a running server, send a message, watch the streamed answer render (Markdown included), use
regenerate / edit / new chat, see an error displayed, and save a screenshot to test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.inference_helpers import ThreadServer, make_app, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--disable-extensions", "--no-first-run"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def page_url():
    with ThreadServer(make_app(slow=0.01)) as s:
        yield s.url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_chat_page_streams_an_answer(browser, page_url):
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(page_url + "/")
    page.wait_for_function("document.getElementById('status').textContent.includes('ready')", timeout=20_000)
    page.fill("#maxtokens", "24")
    page.fill("#temperature", "0")
    page.fill("#input", "Hello world!")
    # count the renders of the answer while it streams (each chunk re-renders the assistant bubble)
    page.evaluate(
        """() => { window.renders = 0; new MutationObserver((ms) => { for (const m of ms) if (m.target.closest && m.target.closest('.msg.assistant .body')) window.renders++; })
        .observe(document.getElementById('messages'), {childList: true, subtree: true}); }"""
    )
    page.click("#send")
    page.wait_for_selector(".msg.user")
    assert page.inner_text(".msg.user .body") == "Hello world!"
    # streaming: the stop button shows while the answer is being written, then the answer settles
    page.wait_for_selector(".msg.assistant .tool-regenerate", timeout=30_000)
    answer = page.inner_text(".msg.assistant .body")
    assert answer.strip()
    assert page.evaluate("window.renders") >= 5, "the answer should appear piece by piece, not at once"
    assert not page.is_visible("#stop") and page.is_visible("#send")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
    assert (ARTIFACTS / "chat-page.png").stat().st_size > 5_000
    # every request stayed on the server's origin
    assert requests and all(u.startswith(page_url) or u.startswith("data:") for u in requests)
    # regenerate replaces the answer (greedy: with the same text); edit puts the message back in the box
    page.click(".tool-regenerate")
    page.wait_for_selector(".msg.assistant .tool-regenerate", timeout=30_000)
    assert page.inner_text(".msg.assistant .body") == answer
    page.click(".tool-edit")
    assert page.input_value("#input") == "Hello world!" and page.locator(".msg").count() == 0
    page.click("#newchat")
    assert page.input_value("#input") == "" and page.locator(".msg").count() == 0
    assert not console_errors, console_errors


def test_markdown_is_rendered_safely(browser, page_url):
    page = browser.new_page()
    page.goto(page_url + "/")
    html = page.evaluate(
        """() => renderMarkdown("# Title\\nSome **bold** and `code` and <img src=x onerror=alert(1)>\\n\\n- a\\n- b\\n\\n```python\\nprint('<b>hi</b>')\\n```\\n[ok](https://example.com) [bad](javascript:alert(1))")"""
    )
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert "<ul><li>a</li><li>b</li></ul>" in html
    assert '<pre><code data-lang="python">print(&#39;&lt;b&gt;hi&lt;/b&gt;&#39;)\n</code></pre>' in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'href="https://example.com"' in html and "javascript:" not in html.split("[bad]")[0] and 'href="javascript' not in html


def test_errors_are_displayed(browser, page_url):
    page = browser.new_page()
    page.goto(page_url + "/")
    page.wait_for_function("document.getElementById('status').textContent.includes('ready')", timeout=20_000)
    page.fill("#temperature", "7")  # the server refuses it: 422 with a JSON error
    page.fill("#input", "Hello")
    page.click("#send")
    page.wait_for_selector(".error", timeout=20_000)
    assert "temperature" in page.inner_text(".error") and "422" in page.inner_text(".error")


def test_page_behind_an_api_key(browser):
    """With --api-key the browser logs in with HTTP Basic (the key as password) and the page's API
    calls then carry the same credentials."""
    with ThreadServer(make_app(api_key="k3y")) as s:
        import httpx

        assert httpx.get(s.url + "/").status_code == 401  # without credentials (a browser would ask for them)
        context = browser.new_context(http_credentials={"username": "me", "password": "k3y"})
        page = context.new_page()
        assert page.goto(s.url + "/").status == 200
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')", timeout=20_000)
        page.fill("#maxtokens", "8")
        page.fill("#input", "Hello")
        page.click("#send")
        page.wait_for_selector(".msg.assistant .tool-regenerate", timeout=30_000)
        assert page.locator(".error").count() == 0
        context.close()


EVIL_PAGE = """<!doctype html><html><body>
<form id="f" method="POST" action="{api}" enctype="text/plain"><input name='{{"messages": [{{"role": "user", "content": "hi"}}], "x": "' value='"}}'></form>
<script>
fetch("{api}", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{messages: [{{role: "user", content: "hi"}}], max_tokens: 4}})}})
  .then(() => {{ document.title = "sent"; }}, () => {{ document.title = "failed"; }});
</script></body></html>"""


def test_another_sites_page_cannot_make_the_browser_use_the_model(browser):
    """A real page on another origin (localhost:OTHER, cross-site to 127.0.0.1:PORT) sends the "simple"
    requests a browser allows without asking: a no-cors text/plain fetch and a text/plain form post."""
    import http.server

    app = make_app()
    with ThreadServer(app) as s:
        api = s.url + "/v1/chat/completions"

        class Evil(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = EVIL_PAGE.format(api=api).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
        import threading

        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            page = browser.new_page()
            statuses = []
            page.on("response", lambda r: statuses.append(r.status) if r.url.startswith(api) else None)
            page.goto(f"http://localhost:{evil.server_address[1]}/")
            page.wait_for_function("document.title !== ''", timeout=20_000)
            with page.expect_navigation():
                page.evaluate("document.getElementById('f').submit()")
            assert statuses == [403, 403], statuses  # both reached the server, both refused
            assert app.state.metrics.completion_tokens == 0  # and the model never ran
        finally:
            evil.shutdown()
