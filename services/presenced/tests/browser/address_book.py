#!/usr/bin/env python3
"""Drives the web address book in a real browser for tests/browser.rs.

Debian's Chromium (/usr/bin/chromium, or $CHROMIUM) under Playwright
(PyPI `playwright`; its own browser download is never used). The Rust test
owns the server and the SIP user agents; this script owns the browser and
does one step per line it reads on stdin, a JSON object:

  {"op": "open", "url": "http://127.0.0.1:PORT/"}
  {"op": "login", "aor": "...", "password": "..."}    keyboard only
  {"op": "search", "query": "...", "expect": "sip:bob@example.com"}
  {"op": "lamp", "aor": "...", "text": "Available", "class": "available"}
  {"op": "status", "status": "busy", "note": "..."}
  {"op": "message", "aor": "...", "text": "..."}
  {"op": "quit"}

and answers each with one JSON line: {"ok": true, ...} or
{"ok": false, "error": "...", "screenshot": PATH}. Waits are Playwright's
(each up to --timeout ms); the Rust side decides what is a failure.
"""

import argparse
import json
import os
import sys
import tempfile

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    print(
        json.dumps(
            {
                "ok": False,
                "error": "python3 cannot import playwright: run scripts/test-deps.sh "
                "(pip install playwright; apt-get install chromium)",
            }
        ),
        flush=True,
    )
    sys.exit(2)

# As the machines here need them: no network beyond loopback, running as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]


def row(page, aor):
    return page.locator(f'#results tbody tr[data-aor="{aor}"]')


def op_open(page, step):
    page.goto(step["url"])
    expect(page.locator("#login-aor")).to_be_visible()
    expect(page.locator("#login-aor")).to_be_focused()
    return {}


def op_login(page, step):
    # Keyboard only, as a user without a mouse: the page focuses the
    # address; Tab to the password; Enter submits.
    page.keyboard.type(step["aor"])
    page.keyboard.press("Tab")
    expect(page.locator("#login-password")).to_be_focused()
    page.keyboard.type(step["password"])
    page.keyboard.press("Enter")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#whoami")).to_contain_text("Logged in as")
    return {"whoami": page.locator("#whoami").inner_text()}


def op_search(page, step):
    page.get_by_label("Search by name, address or department").fill(step["query"])
    page.get_by_role("button", name="Search").click()
    expect(row(page, step["expect"])).to_be_visible()
    # Both live streams (presence and dialog) have sent their current states.
    expect(page.locator("body")).to_have_attribute("data-presence-synced", "true")
    expect(page.locator("body")).to_have_attribute("data-dialog-synced", "true")
    return {
        "summary": page.locator("#search-summary").inner_text(),
        "rows": page.locator("#results tbody tr").count(),
    }


def op_lamp(page, step):
    r = row(page, step["aor"])
    # Colour and text: the text says it, the dot's class colours it.
    expect(r.locator(".lamp-text")).to_have_text(step["text"])
    expect(r.locator(".lamp")).to_have_class(f"lamp lamp-{step['class']}")
    return {"live": page.locator("#live").inner_text()}


def op_status(page, step):
    page.get_by_label("Status", exact=True).select_option(step["status"])
    page.get_by_label("Note").fill(step.get("note", ""))
    page.get_by_role("button", name="Set status").click()
    expect(page.locator("#status-result")).to_contain_text("Status set")
    return {"result": page.locator("#status-result").inner_text()}


def op_message(page, step):
    r = row(page, step["aor"])
    r.get_by_role("button").filter(has_text="Message").click()
    dialog = page.locator("#message-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#message-text")).to_be_focused()
    page.keyboard.type(step["text"])
    page.get_by_role("button", name="Send").click()
    result = page.locator("#message-result")
    expect(result).not_to_have_text("Sending…")
    expect(result).not_to_have_text("")
    text = result.inner_text()
    page.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    return {"result": text}


OPS = {
    "open": op_open,
    "login": op_login,
    "search": op_search,
    "lamp": op_lamp,
    "status": op_status,
    "message": op_message,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=int, default=10000, help="per wait, in ms")
    args = ap.parse_args()
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    shots = tempfile.mkdtemp(prefix="address-book-")
    console = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.set_default_timeout(args.timeout)
        expect.set_options(timeout=args.timeout)
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        print(json.dumps({"ok": True, "browser": browser.version}), flush=True)
        n = 0
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            step = json.loads(line)
            if step["op"] == "quit":
                break
            n += 1
            try:
                answer = {"ok": True, **OPS[step["op"]](page, step)}
            except (AssertionError, PlaywrightError, KeyError) as e:
                shot = os.path.join(shots, f"step-{n}-{step['op']}.png")
                try:
                    page.screenshot(path=shot, full_page=True)
                except PlaywrightError:
                    shot = None
                answer = {
                    "ok": False,
                    "error": f"{type(e).__name__}: {e}",
                    "screenshot": shot,
                    "console": console[-20:],
                }
            print(json.dumps(answer), flush=True)
        browser.close()


if __name__ == "__main__":
    main()
