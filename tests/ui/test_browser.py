"""The console in a real headless Chromium (Debian's, through chromium-driver and Selenium) against a real API,
worker and Temporal dev server on the simulated example fleet.

Each test leaves a screenshot of every page it visits in :data:`tests.ui.conftest.ARTIFACTS`, and checks every
page with axe-core (WCAG 2.1 A and AA rules: labels, contrast, landmarks, names of controls).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from patchflow.core.documents import dump_yaml
from tests.ui.conftest import ARTIFACTS, UiStack

WAIT = 60


class Console:
    """One browser on the console: navigation, screenshots and accessibility checks."""

    def __init__(self, driver: WebDriver, stack: UiStack, axe: str, test: str) -> None:
        self.driver = driver
        self.stack = stack
        self.axe = axe
        self.folder = ARTIFACTS / test
        self.folder.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.stack.url + path)

    def sign_in(self, name: str) -> None:
        """Through the form, as a person types it."""
        self.open("/ui/login")
        field = self.driver.find_element(By.ID, "token")
        field.send_keys(self.stack.tokens[name])
        field.send_keys(Keys.ENTER)
        self.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=who]").text == name)

    def sign_out(self) -> None:
        self.driver.find_element(By.CSS_SELECTOR, ".signout button").click()
        self.until(lambda d: d.current_url.endswith("/ui/login"))

    def until(self, condition: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition)

    def text(self, css: str) -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

    def shot(self, name: str, *, height: int = 4000) -> Path:
        """The whole page, not only the window (Chrome DevTools Protocol, Page.captureScreenshot with
        captureBeyondViewport), at most ``height`` CSS pixels of it."""
        path = self.folder / f"{name}.png"
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], height), "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def check_accessible(self, name: str) -> None:
        """axe-core finds no WCAG 2.1 A/AA violation on the current page (and a screenshot is kept)."""
        self.shot(name)
        self.driver.execute_script(self.axe)
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
            ".then(r => done(r.violations.map(v => v.id + ': ' + v.help + ' ' + "
            "v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '))))"
            ".catch(e => done(['axe failed: ' + e]));"
        )
        assert result == [], f"{name}: {result}"


@pytest.fixture
def console(
    browser: WebDriver, ui_stack: UiStack, axe_source: str, request: pytest.FixtureRequest
) -> Console:
    return Console(browser, ui_stack, axe_source, request.node.name)


def test_viewer_signs_in_by_link_and_watches_a_wave_progress(console: Console, ui_stack: UiStack) -> None:
    """The link ``patchflow demo`` prints (``/ui/login#token=…``) signs the viewer in; the wave page then
    updates its progress by itself, without reloading, and offers no buttons to a viewer."""
    wave_id = ui_stack.start_wave("slow.yaml")
    console.open(f"/ui/login#token={ui_stack.tokens['vic']}")
    console.until(lambda d: d.current_url.endswith("/ui/waves"))
    assert "#token" not in console.driver.current_url
    assert console.text("[data-testid=who]") == "vic"
    console.until(lambda d: wave_id in d.find_element(By.CSS_SELECTOR, "[data-testid=waves]").text)
    console.check_accessible("waves")

    console.driver.find_element(By.LINK_TEXT, wave_id).click()
    console.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#wave-timeline"))
    console.driver.execute_script("window.__samePage = true")
    first = console.text("#wave-timeline")
    console.until(lambda d: d.find_element(By.CSS_SELECTOR, "#wave-timeline").text != first)
    assert console.driver.execute_script("return window.__samePage === true"), "the page reloaded"
    assert console.driver.find_elements(By.CSS_SELECTOR, "[data-testid^=action-]") == []
    assert console.driver.find_elements(By.CSS_SELECTOR, "form[action$='/gate']") == []
    console.check_accessible("wave-running")
    # Cancelled through the API so it does not run on behind the other tests.
    import httpx

    httpx.post(
        f"{ui_stack.url}/waves/{wave_id}/cancel", json={"comment": "test over"}, headers=ui_stack.auth("olga")
    )


def test_approver_approves_prod_and_another_approver_is_refused(console: Console, ui_stack: UiStack) -> None:
    """Only a listed approver's decision counts: alice (role approver, not listed on prod) is refused with the
    wave's reason; ops-lead (listed) approves from the inbox and the wave goes on to succeed.

    The refusal is the workflow Update validator's (Temporal docs, "Message passing: Updates": a validator
    that raises rejects the Update before it enters the history)."""
    wave_id = ui_stack.start_wave("demo.yaml")
    ui_stack.wait_for(wave_id, lambda d: d["state"] == "waiting_approval")

    console.sign_in("alice")
    console.open("/ui/approvals")
    others = console.text("[data-testid=others]")
    assert wave_id in others and "ops-lead" in others
    assert wave_id not in console.text("#mine-title + *")
    console.open(f"/ui/waves/{wave_id}")
    assert "not among them" in console.text("#gate-title + p")
    console.driver.find_element(By.ID, "gate-comment").send_keys("looks fine to me")
    console.driver.find_element(By.CSS_SELECTOR, "button[value=approve]").click()
    refusal = console.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=flash-error]"))
    assert "'alice' may not approve stage 'prod'" in refusal.text and "ops-lead" in refusal.text
    console.check_accessible("gate-refused")
    assert ui_stack.wave(wave_id)["state"] == "waiting_approval"
    console.sign_out()

    console.sign_in("ops-lead")
    console.open(f"/ui/waves/{wave_id}")
    assert "not among them" not in console.text("#gate-title + p")
    console.shot("wave-waiting-approval", height=1450)
    console.open("/ui/approvals")
    mine = console.text("[data-testid=mine]")
    assert wave_id in mine and "promote into prod" in mine
    console.check_accessible("approvals")
    gate = console.driver.find_element(By.CSS_SELECTOR, f"[data-gate='{wave_id}/prod']")
    gate.find_element(By.TAG_NAME, "textarea").send_keys(
        "dev and test are clean; the one test failure is known"
    )
    # Focus elsewhere, then let the page refresh its live regions: a half-written comment is never lost.
    console.driver.execute_script("document.activeElement.blur()")
    poll_seconds = console.driver.execute_script("return document.body.dataset.pollSeconds")
    time.sleep(int(poll_seconds) * 2 + 0.5)
    gate = console.driver.find_element(By.CSS_SELECTOR, f"[data-gate='{wave_id}/prod']")
    typed = gate.find_element(By.TAG_NAME, "textarea").get_attribute("value")
    assert typed == "dev and test are clean; the one test failure is known"
    gate.find_element(By.CSS_SELECTOR, "button[value=approve]").click()
    done = console.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=flash-ok]"))
    assert "stage prod approved by ops-lead" in done.text
    ui_stack.wait_for(wave_id, lambda d: d["state"] == "succeeded")
    console.open(f"/ui/waves/{wave_id}")
    assert "succeeded" in console.text("[data-testid=wave-state]")
    decisions = console.text("[data-stage=prod]")
    assert "approved by ops-lead via api" in decisions and "the one test failure is known" in decisions
    console.check_accessible("wave-succeeded")
    console.open(f"/ui/audit?wave={wave_id}")
    audit = console.text("[data-testid=audit]")
    assert "alice" in audit and "refused" in audit and "ops-lead" in audit
    console.check_accessible("audit")


def test_operator_halts_and_resumes_behind_a_confirmation(console: Console, ui_stack: UiStack) -> None:
    wave_id = ui_stack.start_wave("slow.yaml")
    ui_stack.wait_for(wave_id, lambda d: d["state"] == "running" and d["stages"][0]["instances"])
    console.sign_in("olga")
    console.open(f"/ui/waves/{wave_id}")
    console.driver.find_element(By.CSS_SELECTOR, "[data-testid=action-halt]").click()
    console.until(lambda d: "/confirm/halt" in d.current_url)
    assert ui_stack.wave(wave_id)["state"] == "running", "the link alone changes nothing"
    console.check_accessible("confirm-halt")
    console.driver.find_element(By.ID, "action-comment").send_keys("checking a report")
    console.driver.find_element(By.CSS_SELECTOR, "[data-testid=confirm]").click()
    flash = console.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=flash-ok]"))
    assert "halt requested" in flash.text
    ui_stack.wait_for(wave_id, lambda d: d["state"] == "halted")
    # The open page notices the new state by itself and reloads to show resume.
    resume = console.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=action-resume]"))
    console.check_accessible("wave-halted")
    resume.click()
    console.until(lambda d: "/confirm/resume" in d.current_url)
    console.driver.find_element(By.CSS_SELECTOR, "[data-testid=confirm]").click()
    flash = console.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=flash-ok]"))
    assert "resumed" in flash.text
    ui_stack.wait_for(wave_id, lambda d: d["state"] != "halted")
    console.driver.find_element(By.CSS_SELECTOR, "[data-testid=action-cancel]").click()
    console.driver.find_element(By.CSS_SELECTOR, "[data-testid=confirm]").click()
    ui_stack.wait_for(wave_id, lambda d: d["state"] == "cancelled")


def test_failure_detail_keyboard_only_and_other_pages(console: Console, ui_stack: UiStack) -> None:
    """A failed instance's detail, reached with the keyboard alone; schedules and compliance render."""
    wave_id = ui_stack.start_wave("demo.yaml")
    ui_stack.wait_for(wave_id, lambda d: d["state"] == "waiting_approval")
    schedule_id = _paused_schedule(ui_stack)
    ui_stack.judge_compliance()
    console.sign_in("vic")
    console.check_accessible("login-landing")
    console.open(f"/ui/waves/{wave_id}")
    select = console.driver.find_element(By.ID, "i-state")
    select.send_keys("failed")  # typed, as a keyboard user picks an option
    console.driver.find_element(By.CSS_SELECTOR, "form[aria-label='Filter instances'] button").send_keys(
        Keys.ENTER
    )
    console.until(lambda d: "state=failed" in d.current_url)
    rows = console.driver.find_elements(By.CSS_SELECTOR, "[data-testid=instances] tbody tr")
    assert [r.get_attribute("data-instance") for r in rows] == ["i-0test000000000004"]
    summary = rows[0].find_element(By.TAG_NAME, "summary")
    console.driver.execute_script("arguments[0].focus()", summary)
    summary.send_keys(Keys.ENTER)
    detail = rows[0].find_element(By.CSS_SELECTOR, "[data-testid=detail]")
    console.until(lambda d: detail.is_displayed())
    assert "fail" in detail.text.lower()
    console.check_accessible("failure-detail")

    # The skip link is the first thing the keyboard reaches, and it moves focus to the content.
    console.open("/ui/waves")
    console.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    active = console.driver.switch_to.active_element
    assert active.text == "Skip to content"
    active.send_keys(Keys.ENTER)
    assert console.driver.switch_to.active_element.get_attribute("id") == "main"

    console.open("/ui/schedules")
    row = console.text("[data-testid=schedules]")
    assert schedule_id in row and "paused" in row
    console.check_accessible("schedules")
    console.open("/ui/compliance")
    chart = console.driver.find_element(By.CSS_SELECTOR, "[data-testid=compliance-chart]")
    bars = {r.get_attribute("class") for r in chart.find_elements(By.TAG_NAME, "rect")}
    assert bars and bars <= {
        f"bar-{level}"
        for level in ("COMPLIANT", "CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED")
    }
    assert {"dev", "test", "prod"} <= set(console.text("[data-testid=compliance] tbody").split())
    console.check_accessible("compliance")
    console.sign_out()
    console.check_accessible("login")
    asyncio.run(_delete_schedule(ui_stack, schedule_id))


def _paused_schedule(stack: UiStack) -> str:
    """A paused weekly schedule of a plan no other test schedules (schedules are server-wide)."""
    from patchflow.control.scheduling import ScheduleRequest, create_schedule
    from patchflow.core.plans import load_plan
    from patchflow.core.schedules import parse_schedule

    assert stack.settings.api_plans_dir is not None
    source = stack.settings.api_plans_dir / "demo.yaml"
    plan_doc = yaml.safe_load(source.read_text())
    plan_doc["name"] = f"ui{os.urandom(3).hex()}"
    path = stack.settings.api_plans_dir / f"{plan_doc['name']}.yaml"
    path.write_text(dump_yaml(plan_doc))
    request = ScheduleRequest(
        plan=load_plan(path),
        schedule=parse_schedule(weekly="tue", at="03:00", timezone="Europe/Berlin"),
        note="paused by the UI test",
        who="olga",
        paused=True,
    )

    async def create() -> str:
        from temporalio.client import Client

        client = await Client.connect(stack.settings.temporal_address)
        return await create_schedule(client, stack.settings, request)

    return asyncio.run(create())


async def _delete_schedule(stack: UiStack, schedule_id: str) -> None:
    from temporalio.client import Client

    from patchflow.control.scheduling import delete_schedule

    client = await Client.connect(stack.settings.temporal_address)
    await delete_schedule(client, schedule_id)


def test_readme_screenshots_are_committed() -> None:
    """Every console screenshot the README shows is in docs/console (copied from these tests' artefacts)."""
    root = Path(__file__).resolve().parents[2]
    shown = re.findall(r"\]\((docs/console/[^)]+\.png)\)", (root / "README.md").read_text())
    assert len(shown) >= 4
    for image in shown:
        assert (root / image).is_file(), image
        assert (root / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
