"""Drives the operator console in headless Chromium with Playwright, as an operator would.

Run by server/tests/api/console.rs against a running server, with Stripe in the sandbox
(its next call refused with a 400), its webhooks, and a consumer. Arguments: the server's
base URL, the API token, Chromium's path, and the directory for the screenshots. Exits
non-zero on the first expectation that fails.
"""

import json
import sys
import time

from playwright.sync_api import expect, sync_playwright

BASE, TOKEN, CHROMIUM, SHOTS = sys.argv[1:5]
WAIT_MS = 45_000
PAGES = ["overview", "dead", "events", "customers", "customers/c-dead", "jobs"]

expect.set_options(timeout=WAIT_MS)


def step(what):
    print(f"console: {what}", flush=True)


def api(page, method, path, body=None):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return page.request.fetch(
        f"{BASE}/api/v1{path}",
        method=method,
        headers=headers,
        data=json.dumps(body) if body is not None else None,
    )


def poll(what, check):
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def shot(page, name):
    contrast_is_aa(page, name)
    words = page.locator("#page").inner_text().split()
    assert "null" not in words and "undefined" not in words, f"{name}: a missing value was rendered"
    page.screenshot(path=f"{SHOTS}/{name}.png", full_page=True)


def every_field_is_labelled(page, where):
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select')]"
        ".filter(e => e.offsetParent !== null && (!e.labels || e.labels.length === 0))"
        ".map(e => e.id || e.name)"
    )
    assert not unlabelled, f"{where}: fields without a label: {unlabelled}"


CONTRAST = """
() => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      if (rgb(c).length < 4 || rgb(c)[3] > 0) return rgb(c).slice(0, 3);
    }
    return [255, 255, 255];
  };
  const failures = [];
  for (const el of document.querySelectorAll("body *")) {
    const text = [...el.childNodes].filter((n) => n.nodeType === 3 && n.textContent.trim()).length;
    if (!text || el.offsetParent === null) continue;
    const style = getComputedStyle(el);
    const a = lum(rgb(style.color).slice(0, 3));
    const b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) failures.push(`${el.tagName} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
  }
  return failures;
}
"""


def contrast_is_aa(page, where):
    failures = page.evaluate(CONTRAST)
    assert not failures, f"{where}: text below WCAG AA contrast: {failures}"


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        problems = []
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        # The refused token's 401 is logged by Chromium as a failed load; nothing else may be.
        page.on(
            "console",
            lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" and "401" not in m.text
            else None,
        )

        step("a wrong token is refused")
        page.goto(f"{BASE}/console")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        every_field_is_labelled(page, "sign in")
        contrast_is_aa(page, "sign in")
        token = page.get_by_label("API token")
        token.fill("not-the-token")
        token.press("Enter")
        expect(page.locator("#sign-in-error")).to_have_text("That token was refused.")
        expect(page.locator("#nav")).to_be_hidden()
        expect(page.locator("#page")).to_be_empty()

        step("the right token, typed and sent with the keyboard, opens the overview")
        token.fill(TOKEN)
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        expect(page.locator("#health")).to_have_text("ok")
        expect(page.locator("#database")).to_have_text("ok")
        expect(page.locator("#dead-count")).to_have_text("0")

        step("the pages are reached with the keyboard")
        page.evaluate("document.activeElement && document.activeElement.blur()")
        reached = []
        for _ in range(12):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("document.activeElement.textContent.trim()"))
        for name in ["Overview", "Dead tasks", "Webhook events", "Customers", "Jobs", "Sign out"]:
            assert name in reached, f"{name} not reached by Tab: {reached}"
        page.get_by_role("link", name="Dead tasks").focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Dead tasks")).to_be_visible()
        expect(page.get_by_text("No dead task.")).to_be_visible()
        every_field_is_labelled(page, "dead tasks")

        step("dead tasks appear when Stripe refuses creates")
        tasks = {}
        for id, name in [("c-dead", "Dee"), ("c-dead-2", "Dan"), ("c-dead-3", "Dora")]:
            created = api(page, "POST", "/customers", {"id": id, "name": name, "email": f"{id}@example.com"})
            assert created.status == 202, created.text()
            tasks[id] = (created.json()["tasks"][0]["id"], created.headers["x-request-id"])
        task_id, request_id = tasks["c-dead"]
        for id, (task, _) in tasks.items():
            row = page.locator(f'tr[data-task="{task}"]')
            expect(row).to_be_visible()
            expect(row).to_contain_text(id)
            expect(row).to_contain_text("refused by the test")
        expect(page.get_by_role("button", name="Retry all 3 shown")).to_be_visible()
        shot(page, "dead-tasks")
        row = page.locator(f'tr[data-task="{task_id}"]')

        step("a retry from the page succeeds")
        row.get_by_role("button", name=f"Retry task {task_id}").click()
        expect(page.locator("#retry-notice")).to_contain_text("pending again")
        poll(
            "the retried task to succeed",
            lambda: api(page, "GET", f"/tasks/{task_id}").json()["status"] == "succeeded",
        )
        expect(row).to_have_count(0)

        step("retry all shown revives the other two")
        page.get_by_role("button", name="Retry all 2 shown").click()
        expect(page.locator("#retry-notice")).to_have_text("2 of 2 tasks are pending again.")
        for id in ["c-dead-2", "c-dead-3"]:
            poll(
                f"{id}'s task to succeed",
                lambda task=tasks[id][0]: api(page, "GET", f"/tasks/{task}").json()["status"] == "succeeded",
            )
        expect(page.get_by_text("No dead task.")).to_be_visible()

        step("the overview counts it no more")
        page.get_by_role("link", name="Overview").click()
        expect(page.locator("#dead-count")).to_have_text("0")
        expect(page.locator("#last-webhook")).to_contain_text("ago")
        shot(page, "overview")

        step("the customer is found and its timeline runs from the create to the echo")
        page.get_by_role("link", name="Customers").click()
        every_field_is_labelled(page, "customers")
        search = page.get_by_label("Id or email")
        search.fill("c-dead@example.com")
        search.press("Enter")
        expect(page.locator("#customers")).to_contain_text("c-dead")
        expect(page.locator("#customers")).to_contain_text("synced")
        shot(page, "customers")
        page.locator("#customers").get_by_role("link", name="c-dead").click()
        expect(page.get_by_role("heading", name="Customer c-dead")).to_be_visible()
        timeline = page.locator("#timeline")
        create = timeline.locator("li.change").first
        expect(create).to_contain_text("create (version 1)")
        expect(create).to_contain_text(request_id)
        expect(create.locator("li.task")).to_contain_text("stripe: succeeded")
        expect(create.locator("li.task")).to_contain_text("cus_")
        echo = timeline.locator("li.event").first
        expect(echo).to_contain_text("customer.created")
        expect(echo).to_contain_text("webhook")
        shot(page, "timeline")

        step("the webhook events are listed and filtered")
        page.get_by_role("link", name="Webhook events").click()
        every_field_is_labelled(page, "events")
        expect(page.locator("#events")).to_contain_text("customer.created")
        page.get_by_label("Type").fill("customer.updated")
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_text("No event matches.")).to_be_visible()
        page.get_by_label("Type").fill("customer.created")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("#events tbody tr")).to_have_count(3)
        for id in tasks:
            expect(page.locator("#events")).to_contain_text(id)
        shot(page, "events")

        step("a reconcile is started and its report read")
        page.get_by_role("link", name="Jobs").click()
        every_field_is_labelled(page, "jobs")
        page.get_by_label("Kind").select_option("reconcile")
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#job-status")).to_have_text("succeeded")
        expect(page.get_by_role("heading", name="Report")).to_be_visible()
        # Three customers, the same on both sides.
        expect(page.locator("#job-report")).to_contain_text("customers walked3")
        expect(page.locator("#job-report")).to_contain_text("equal3")
        shot(page, "jobs")

        step("at a phone's width no page scrolls sideways")
        page.set_viewport_size({"width": 390, "height": 844})
        for name in PAGES:
            page.goto(f"{BASE}/console#/{name}")
            page.reload()
            expect(page.locator("#page h2")).to_be_visible()
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"#/{name} is {overflow}px wider than a phone"
        page.goto(f"{BASE}/console#/overview")
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        shot(page, "overview-phone")

        step("signing out forgets the token")
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.reload()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0

        assert not problems, "\n".join(problems)
        browser.close()
        step("done")


if __name__ == "__main__":
    main()
