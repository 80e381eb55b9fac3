"""The page in a real browser (Chromium, driven by Playwright), used the way a person would.

Each test opens pages through `pages` (tests/web/conftest.py), which fails the test on any
console error, uncaught page error or dialog it did not announce: the HTTP refusals a test
provokes on purpose (a stale edit's 412, ...) are the only console lines allowed, and only
in that test. Screenshots of both themes go to tests/web/screenshots/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from tests.web.conftest import TOKEN, Pages, Served, screenshot

pytestmark = pytest.mark.slow  # over 10 s: scheduled first (tests/conftest.py)

XSS_NAME = "<img src=x onerror=alert(1)>"


def _api(served: Served) -> httpx.Client:
    headers = {"Authorization": f"Bearer {TOKEN}"} if served.tokens else {}
    return httpx.Client(base_url=served.base_url, headers=headers, timeout=10)


def _create(served: Served, **fields: object) -> dict[str, Any]:
    return _create_many(served, [fields])[0]


def _create_many(served: Served, rows: list[dict[str, object]]) -> list[dict[str, Any]]:
    created = []
    with _api(served) as api:
        for fields in rows:
            response = api.post("/tutorials", json=fields)
            assert response.status_code == 201, response.text
            created.append(response.json())
    return created


def _patch(served: Served, tutorial_id: int, **fields: object) -> None:
    with _api(served) as api:
        response = api.patch(f"/tutorials/{tutorial_id}", json=fields)
    assert response.status_code == 200, response.text


def _names(page: Page) -> list[str]:
    return page.locator("#results > li .open").all_text_contents()


def test_add_search_edit_a_stale_edit_and_delete(pages: Pages, served: Served) -> None:
    page, watch = pages.open(served)
    expect(page.locator("#count")).to_have_text("No tutorials yet. Add the first one.")

    add = page.locator("#add")
    add.get_by_label("Name").fill("Async SQLAlchemy")
    add.get_by_label("Web address").fill("https://example.org/async")
    add.get_by_label("Tags").fill("python 3, machine learning")
    add.get_by_role("button", name="Add").click()
    # The new tutorial is in view, at an address of its own; tags split on commas only.
    expect(page.locator("#detail-status")).to_have_text("Added “Async SQLAlchemy”.")
    expect(page).to_have_url(re.compile(r"#/tutorials/[0-9]+$"))
    expect(page.locator("#detail-tags button")).to_have_text(["python 3", "machine learning"])
    expect(page.locator("#detail-url")).to_have_text("https://example.org/async")
    expect(page.locator("#tag-list button")).to_have_count(2)
    tutorial_id = int(page.url.rsplit("/", 1)[1])

    _create(served, name="Rust ownership", tags=["rust"])
    page.get_by_role("link", name="← All tutorials").click()
    expect(page.locator("#count")).to_have_text("2 tutorials.")
    assert _names(page) == ["Rust ownership", "Async SQLAlchemy"]  # newest first

    # Search as you type: the last word is a prefix.
    page.get_by_label("Search").press_sequentially("sqlalch", delay=20)
    expect(page.locator("#count")).to_have_text("1 tutorial matches.")
    expect(page.locator("#results > li")).to_have_count(1)
    expect(page).to_have_url(re.compile(r"#/\?q=sqlalch$"))
    expect(page.get_by_label("Sort")).to_be_disabled()

    # Edit in place.
    page.get_by_role("link", name="Async SQLAlchemy").click()
    page.get_by_role("button", name="Edit").click()
    edit = page.locator("#edit-form")
    edit.get_by_label("Description").fill("Sessions, engines and pools")
    edit.get_by_role("button", name="Save").click()
    expect(page.locator("#detail-status")).to_have_text("Saved.")
    expect(page.locator("#detail-version")).to_have_text("2")
    expect(page.locator("#detail-description")).to_have_text("Sessions, engines and pools")

    # A stale edit: someone else saved in between. Said next to the form, with a reload.
    page.get_by_role("button", name="Edit").click()
    _patch(served, tutorial_id, name="Async SQLAlchemy, revised")
    watch.allowed_statuses.add(412)
    edit.get_by_label("Name").fill("My edit")
    edit.get_by_role("button", name="Save").click()
    expect(page.locator("#edit-error")).to_contain_text(
        "Someone changed this tutorial after you opened it, so your changes were not saved."
    )
    screenshot(page, "stale-edit-light")
    edit.get_by_role("button", name="Load the latest version").click()
    expect(edit.get_by_label("Name")).to_have_value("Async SQLAlchemy, revised")
    expect(page.locator("#edit-error")).to_be_hidden()
    edit.get_by_role("button", name="Cancel").click()

    # A stale delete: refused beside the button, then done after looking again.
    _patch(served, tutorial_id, description="changed again")
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("#delete-question")).to_have_text(
        "Delete “Async SQLAlchemy, revised” for good?"
    )
    page.get_by_role("button", name="Yes, delete it").click()
    expect(page.locator("#delete-error")).to_contain_text("so it was not deleted")
    page.get_by_role("button", name="Show the latest version").click()
    expect(page.locator("#detail-description")).to_have_text("changed again")
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Yes, delete it").click()
    expect(page.locator("#list-status")).to_have_text("Deleted “Async SQLAlchemy, revised”.")
    expect(page.locator("#count")).to_have_text("No tutorials match.")  # still searching
    page.get_by_label("Search").fill("")
    expect(page.locator("#count")).to_have_text("1 tutorial.")
    expect(page.locator("#tag-list button")).to_have_count(1)  # only rust is left


def test_paging_sorting_and_tags(pages: Pages, served: Served) -> None:
    names = [f"Tutorial {(n * 7) % 25:02d}" for n in range(25)]  # not in name order
    _create_many(
        served,
        [
            {"name": name, "tags": ["even"] if n % 2 == 0 else ["odd", "python 3"]}
            for n, name in enumerate(names)
        ],
    )
    page, _ = pages.open(served)
    expect(page.locator("#count")).to_have_text("25 tutorials.")
    expect(page.locator("#results > li")).to_have_count(20)
    assert _names(page) == names[::-1][:20]
    expect(page.locator("#page-number")).to_have_text("Page 1 of 2")
    page.get_by_role("button", name="Next").click()
    expect(page.locator("#results > li")).to_have_count(5)
    expect(page.locator("#page-number")).to_have_text("Page 2 of 2")
    expect(page.get_by_role("button", name="Next")).to_be_disabled()
    assert _names(page) == names[::-1][20:]
    page.get_by_role("button", name="Previous").click()
    expect(page.locator("#results > li")).to_have_count(20)

    page.get_by_label("Sort").select_option("name")
    expect(page).to_have_url(re.compile(r"#/\?sort=name$"))
    expect(page.locator("#results > li .open").first).to_have_text("Tutorial 00")
    assert _names(page) == sorted(names)[:20]
    page.reload()  # the address keeps the order
    expect(page.locator("#results > li .open").first).to_have_text("Tutorial 00")
    expect(page.get_by_label("Sort")).to_have_value("name")

    # Tags: the list with counts, and any tag on a tutorial, filter the listing.
    expect(page.locator("#tag-list button")).to_have_text(["even 13", "odd 12", "python 3 12"])
    page.locator("#results > li").first.get_by_role(
        "button", name=re.compile("tagged even")
    ).click()
    expect(page.locator("#count")).to_have_text("13 tutorials tagged even.")
    expect(page.locator("#tag-list button", has_text="even")).to_have_attribute(
        "aria-pressed", "true"
    )
    page.get_by_role("button", name="Remove the tag filter even").click()
    expect(page.locator("#count")).to_have_text("25 tutorials.")
    page.get_by_role("button", name="python 3: 12 tutorials").click()
    expect(page.locator("#count")).to_have_text("12 tutorials tagged python 3.")
    screenshot(page, "browse-light")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    screenshot(page, "browse-phone-light")


def test_a_tutorial_has_an_address_of_its_own(pages: Pages, served: Served) -> None:
    created = _create(
        served, name="Deep link", url="https://example.org/deep", description="Line one\nTwo"
    )
    page, watch = pages.open(served, path=f"/#/tutorials/{created['tutorial_id']}")
    expect(page.locator("#detail-name")).to_have_text("Deep link")
    expect(page.locator("#detail-name")).to_be_focused()
    expect(page).to_have_title("Deep link · Tutorials")
    expect(page.locator("#detail-url")).to_have_attribute("href", "https://example.org/deep")
    page.reload()
    expect(page.locator("#detail-name")).to_have_text("Deep link")
    page.go_back()  # nothing before the deep link in this tab's history but the blank page
    watch.allowed_statuses.add(404)
    page.goto("/#/tutorials/987654")
    expect(page.locator("#detail-status")).to_have_text(
        "There is no tutorial #987654. It may have been deleted."
    )
    expect(page.locator("#detail-view")).to_be_hidden()
    watch.allowed_statuses.add(422)
    page.goto("/#/tutorials/9999999999999999999")  # past bigint: still "no such tutorial"
    expect(page.locator("#detail-status")).to_have_text(
        "There is no tutorial #9999999999999999999. It may have been deleted."
    )
    page.get_by_role("link", name="← All tutorials").click()
    expect(page.locator("#count")).to_have_text("1 tutorial.")


def test_errors_are_said_in_plain_words_beside_their_fields(pages: Pages, served: Served) -> None:
    _create(served, name="Taken", url="https://example.org/taken")
    page, watch = pages.open(served, dark=True)
    add = page.locator("#add")
    add.get_by_role("button", name="Add").click()  # no name: told before asking the server
    name_error = add.locator("#add-name-error")
    expect(name_error).to_have_text("Give it a name of 1 to 255 characters.")
    expect(add.get_by_label("Name")).to_be_focused()
    expect(add.get_by_label("Name")).to_have_attribute("aria-invalid", "true")

    add.get_by_label("Name").fill("A name")
    add.get_by_label("Web address").fill("ftp://example.org/x")
    add.get_by_role("button", name="Add").click()
    expect(name_error).to_be_hidden()
    expect(add.locator("#add-url-error")).to_contain_text("starts with http:// or https://")

    watch.allowed_statuses.update({409, 422})
    add.get_by_label("Web address").fill("https://example.org/taken")
    add.get_by_role("button", name="Add").click()
    expect(add.locator("#add-url-error")).to_have_text(
        "Another tutorial already has this web address."
    )
    add.get_by_label("Web address").fill("")
    add.get_by_label("Tags").fill("fine, " + "x" * 65)
    add.get_by_role("button", name="Add").click()
    tags_error = add.locator("#add-tags-error")
    expect(tags_error).to_have_text(
        f"The tag “{'x' * 24}…” is too long: a tag has at most 64 characters."
    )
    # Beside the field: announced with it, and right under it on the screen.
    described = add.get_by_label("Tags").get_attribute("aria-describedby") or ""
    assert "add-tags-error" in described.split()
    field_box = add.get_by_label("Tags").bounding_box()
    error_box = tags_error.bounding_box()
    assert field_box is not None and error_box is not None
    assert 0 <= error_box["y"] - (field_box["y"] + field_box["height"]) < 60
    screenshot(page, "errors-dark")

    add.get_by_label("Tags").fill("python 3, עברית, हिन्दी, ไทย, 🐍")
    add.get_by_role("button", name="Add").click()
    expect(page.locator("#detail-tags button")).to_have_text(
        ["python 3", "עברית", "हिन्दी", "ไทย", "🐍"]
    )


def test_offline_shows_a_retry_that_works_once_back_online(pages: Pages, served: Served) -> None:
    _create(served, name="Reachable")
    page, watch = pages.open(served)
    expect(page.locator("#count")).to_have_text("1 tutorial.")
    watch.allow_offline = True
    page.context.set_offline(True)
    page.get_by_label("Search").fill("reach")
    notice = page.locator("#notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("The server cannot be reached.")
    expect(page.locator("#count")).to_have_text("The tutorials could not be loaded.")
    expect(page.locator("#results > li")).to_have_count(0)  # nothing stale left in view
    screenshot(page, "offline-light")
    page.get_by_role("button", name="Try again").click()  # still offline: still said
    expect(notice).to_be_visible()
    page.context.set_offline(False)
    page.get_by_role("button", name="Try again").click()
    expect(notice).to_be_hidden()
    expect(page.locator("#count")).to_have_text("1 tutorial matches.")
    expect(page.locator("#results > li .open")).to_have_text(["Reachable"])


def test_markup_in_stored_text_is_shown_as_text(pages: Pages, served: Served) -> None:
    created = _create(
        served,
        name=XSS_NAME,
        description="<script>alert(2)</script>",
        tags=["<b>bold</b>"],
        url="https://example.org/x?q=%3Cimg%20src=x%20onerror=alert(3)%3E",
    )
    page, _ = pages.open(served)
    expect(page.locator("#results > li .open")).to_have_text([XSS_NAME])
    expect(page.locator("#results > li .description")).to_have_text("<script>alert(2)</script>")
    page.get_by_role("link", name=XSS_NAME).click()
    expect(page.locator("#detail-name")).to_have_text(XSS_NAME)
    expect(page.locator("#detail-tags button")).to_have_text(["<b>bold</b>"])
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("#delete-question")).to_have_text(f"Delete “{XSS_NAME}” for good?")
    assert page.locator("img, b, main script").count() == 0
    assert created["tutorial_id"] == 1  # `pages` fails the test had any dialog opened


def test_writes_need_a_sign_in_when_tokens_are_configured(
    pages: Pages, served_with_tokens: Served
) -> None:
    served = served_with_tokens
    page, watch = pages.open(served)
    watch.allowed_statuses.update({401, 403})
    add = page.locator("#add")
    add.get_by_label("Name").fill("Needs a token")
    add.get_by_role("button", name="Add").click()
    expect(page.locator("#add-error-text")).to_have_text(
        "You need to sign in (at the top of the page) to make changes."
    )

    signin = page.locator("#signin")
    signin.get_by_label("Token to make changes").fill("not-the-token")
    signin.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-token-error")).to_have_text(
        "That token is not one this server accepts. Check it and try again."
    )
    screenshot(page, "signin-refused-light")
    signin.get_by_label("Token to make changes").fill(TOKEN)
    signin.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signed-in")).to_be_visible()
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    session = cookies["__Host-tutorials-session"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    assert TOKEN not in session["value"]
    assert cookies["__Host-tutorials-csrf"]["sameSite"] == "Strict"
    assert page.evaluate("document.cookie").startswith("__Host-tutorials-csrf=")  # not the session

    add.get_by_role("button", name="Add").click()
    expect(page.locator("#detail-status")).to_have_text("Added “Needs a token”.")

    # The cookie alone is not enough: a write without the CSRF header (what another site's
    # form or script could make the browser send, were the cookie not SameSite) is refused.
    statuses = page.evaluate(
        """async () => {
            const post = (headers) => fetch("/tutorials", {method: "POST",
                headers: {"Content-Type": "application/json", ...headers},
                body: JSON.stringify({name: "forged"})}).then((r) => r.status);
            return [await post({}), await post({"X-CSRF-Token": "A".repeat(43)})];
        }"""
    )
    assert statuses == [403, 403]
    with _api(served) as api:
        assert [item["name"] for item in api.get("/tutorials").json()["items"]] == ["Needs a token"]

    page.get_by_role("button", name="Sign out").click()
    expect(signin).to_be_visible()
    assert "__Host-tutorials-session" not in {c["name"] for c in page.context.cookies()}
    page.get_by_role("button", name="Edit").click()
    page.locator("#edit-form").get_by_role("button", name="Save").click()
    expect(page.locator("#edit-error-text")).to_have_text(
        "You need to sign in (at the top of the page) to make changes."
    )


def test_import_with_progress_and_export_download(
    pages: Pages, served: Served, tmp_path: Path
) -> None:
    rows = ["name,url,description,tags"]
    rows += [f"Imported {n},https://example.org/{n},Row {n},bulk;n{n % 3}" for n in range(3000)]
    rows.append(",https://example.org/nameless,,")
    source = tmp_path / "catalog.csv"
    source.write_text("\n".join(rows) + "\n")
    page, _ = pages.open(served)
    page.evaluate(
        """() => {
            window.progressSeen = [];
            const bar = document.querySelector("#import-progress");
            new MutationObserver(() => window.progressSeen.push(bar.value))
                .observe(bar, {attributes: true, attributeFilter: ["value"]});
        }"""
    )
    page.get_by_label("A CSV or NDJSON file to import").set_input_files(str(source))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator("#import-status")).to_have_text(
        "Imported catalog.csv: 3,001 rows, 3,000 new, 0 updated, 1 refused."
    )
    expect(page.locator("#import-errors li")).to_have_count(1)
    expect(page.locator("#import-errors li")).to_contain_text("Line 3002:")
    assert max(page.evaluate("window.progressSeen")) == 100
    expect(page.locator("#count")).to_have_text("3,000 tutorials.")
    expect(page.get_by_role("button", name="bulk: 3000 tutorials")).to_be_visible()

    page.get_by_role("button", name="n1: 1000 tutorials").click()
    expect(page.locator("#count")).to_have_text("1,000 tutorials tagged n1.")
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    exported = Path(download.value.path()).read_text().splitlines()
    assert exported[0] == "name,url,description,tags"
    assert len(exported) == 1001
    assert all(line.endswith("bulk;n1") for line in exported[1:])


#: Run in the page: the WCAG AA contrast failures of what is visible (see the file).
_CONTRAST = Path(__file__).with_name("contrast.js").read_text()


def _tab_through(page: Page) -> tuple[int, list[str]]:
    """Tab through the whole page: how many stops, and those without a visible focus outline
    (at least 2px)."""
    unfocused = []
    for stops in range(100):
        page.keyboard.press("Tab")
        shown = page.evaluate(
            """() => {
                const e = document.activeElement;
                const s = getComputedStyle(e);
                const name = `${e.tagName}#${e.id} ${(e.textContent || "").trim().slice(0, 20)}`;
                const ring = s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2;
                return [e === document.body, name, ring];
            }"""
        )
        if shown[0]:
            return stops, unfocused
        if not shown[2]:
            unfocused.append(shown[1])
    raise AssertionError("the focus never left the page")


def test_both_themes_pass_contrast_and_every_action_works_by_keyboard(
    pages: Pages, served: Served
) -> None:
    _create(served, name="Keyboard", url="https://example.org/k", tags=["a11y"], description="d")
    for dark in (False, True):
        page, _ = pages.open(served, dark=dark)
        expect(page.locator("#count")).to_have_text("1 tutorial.")
        expect(page.locator("#tag-list button")).to_have_count(1)
        assert page.evaluate(_CONTRAST) == [], "dark" if dark else "light"
        count = page.locator("#count")
        count.evaluate("(e) => { e.style.color = 'rgb(120, 120, 120)'; }")
        dimmed = page.evaluate(_CONTRAST)
        count.evaluate("(e) => { e.style.color = ''; }")
        assert [line.split('"')[0] for line in dimmed] == ["P#count.count "]  # the check bites
        for control in page.locator("input, select, textarea").all():
            assert control.evaluate("(e) => e.labels.length > 0"), control.get_attribute("id")
        stops, unfocused = _tab_through(page)
        assert unfocused == [] and stops >= 15, (stops, unfocused)
        theme = "dark" if dark else "light"
        screenshot(page, f"list-{theme}")
        page.get_by_role("link", name="Keyboard").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#detail-name")).to_be_focused()
        assert page.evaluate(_CONTRAST) == [], theme
        page.get_by_role("button", name="Edit").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#edit-form").get_by_label("Name")).to_be_focused()
        page.keyboard.press("Escape")
        expect(page.get_by_role("button", name="Edit")).to_be_focused()
        page.keyboard.press("Tab")  # to Delete
        page.keyboard.press("Enter")
        expect(page.get_by_role("button", name="Keep it")).to_be_focused()
        assert page.evaluate(_CONTRAST) == [], theme
        screenshot(page, f"detail-{theme}")
        page.keyboard.press("Escape")
        expect(page.locator("#delete-confirm")).to_be_hidden()
