"""The web pages in a real headless Chromium (Debian's `chromium` + `chromedriver`, driven by
Selenium over W3C WebDriver): log in as each role, a form round trip that ends in an IMAP login,
screenshots checked for size and content, and a phone-sized window without sideways scrolling.
Screenshots are kept in the test's tmp_path for a person to look at."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tests.web.stack import ADMIN, ADMIN_PASSWORD, USER, USER_PASSWORD, WebStack, make_deployment

pytestmark = pytest.mark.external

DESK = (1280, 1000)
PHONE = (390, 844)  # a common phone's CSS viewport


@pytest.fixture
def stack(web_dir: Path) -> Iterator[WebStack]:
    make_deployment(web_dir)
    with WebStack(web_dir) as running:
        yield running


@pytest.fixture
def browser(stack: WebStack) -> Iterator[WebDriver]:
    """A fresh Chromium per test, quit before the servers stop: it closes every connection it
    holds (Chromium opens spare ones ahead of need; a server cannot end those itself while
    they sit in the TLS handshake)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "apt-get install chromium chromium-driver (scripts/test does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    # The deployment's own CA is not in Chromium's store; the pages are still served over TLS,
    # so Secure cookies and the __Host- prefix apply as they do for a public certificate.
    options.accept_insecure_certs = True
    options.add_argument(f"--window-size={DESK[0]},{DESK[1]}")
    with webdriver.Chrome(options=options, service=Service(executable_path=driver)) as chrome:
        yield chrome


def viewport(browser: WebDriver) -> tuple[int, int]:
    w, h = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    return int(w), int(h)


def check_screenshot(browser: WebDriver, path: Path, heading: str) -> Image.Image:
    """The page as rendered: its heading shown, a picture of the viewport's size, not blank."""
    h1 = browser.find_element(By.TAG_NAME, "h1")
    assert h1.is_displayed()
    assert h1.text == heading
    assert h1.size["height"] > 10 and h1.location["y"] < viewport(browser)[1]
    png = browser.get_screenshot_as_png()
    path.write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == viewport(browser)
    colours = image.getcolors(maxcolors=1 << 16)
    # Text, the header bar and cards: many colours (a blank or error page has a handful).
    assert colours is None or len(colours) > 50, len(colours or [])
    # The dark header bar across the top, as the stylesheet draws it: the CSS was served.
    r, g, b = image.getpixel((image.width // 2, 4))
    assert (r, g, b) == (0x16, 0x32, 0x4F)
    return image


def submit(browser: WebDriver, button: WebElement) -> None:
    """Click a form's button and wait for the next page (a click does not wait for it).

    The old page is marked and the wait is for a fully loaded page without the mark: asking
    about the clicked button itself races with Chrome detaching it ("Node with given id does
    not belong to the document").
    """
    browser.execute_script("document.documentElement.dataset.submitted = '1'")
    button.click()

    def next_page(driver: WebDriver) -> bool:
        state = driver.execute_script(
            "return [document.readyState, document.documentElement.dataset.submitted || '']"
        )
        return bool(state == ["complete", ""])

    WebDriverWait(browser, 30, ignored_exceptions=(WebDriverException,)).until(next_page)


def log_in(browser: WebDriver, stack: WebStack, address: str, password: str) -> None:
    browser.get(stack.url + "/login")
    browser.find_element(By.ID, "address").send_keys(address)
    browser.find_element(By.ID, "password").send_keys(password)
    submit(browser, browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]"))


def flash(browser: WebDriver) -> list[str]:
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".flash")]


def test_admin_adds_a_user_who_then_logs_in_over_imap(
    browser: WebDriver, stack: WebStack, tmp_path: Path
) -> None:
    browser.get(stack.url + "/")
    assert browser.current_url == stack.url + "/login"
    check_screenshot(browser, tmp_path / "login.png", "Log in")
    log_in(browser, stack, ADMIN, ADMIN_PASSWORD)
    assert browser.current_url == stack.url + "/admin"
    check_screenshot(browser, tmp_path / "admin.png", "Server status")
    # The session cookie as the browser keeps it: not readable by script, HTTPS only.
    (cookie,) = browser.get_cookies()
    assert cookie["name"] == "__Host-mailstack"
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # The status as `mailstack status` collects it: listeners, certificate, queue, disk.
    assert "expires in" in browser.find_element(By.ID, "cert").text
    assert browser.find_element(By.ID, "queue").text == "0 message(s)"
    assert "never run" in browser.find_element(By.ID, "last-check").text

    form = browser.find_element(By.CSS_SELECTOR, "form[action='/admin/users/add']")
    form.find_element(By.ID, "new-address").send_keys("bob@example.com")
    form.find_element(By.ID, "new-password").send_keys("bob's password 1")
    form.find_element(By.ID, "new-quota").send_keys("50M")
    submit(browser, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    assert flash(browser) == ["Added bob@example.com (quota 50M)."]
    rows = browser.find_element(By.ID, "users").text
    assert "bob@example.com" in rows and "50M" in rows
    assert stack.imap_login("bob@example.com", "bob's password 1") == "OK"

    row = browser.find_element(By.XPATH, "//table[@id='users']//tr[td[1]='bob@example.com']")
    submit(browser, row.find_element(By.CSS_SELECTOR, "button.danger"))
    assert flash(browser) == ["Deleted bob@example.com."]
    assert stack.imap_login("bob@example.com", "bob's password 1") != "OK"


def test_a_user_sees_their_quota_and_sets_an_auto_reply(
    browser: WebDriver, stack: WebStack, tmp_path: Path
) -> None:
    log_in(browser, stack, USER, USER_PASSWORD)
    assert browser.current_url == stack.url + "/account"
    assert "Admin" not in browser.find_element(By.TAG_NAME, "nav").text
    quota = browser.find_element(By.ID, "quota-text").text
    assert quota.startswith(f"{USER} uses ") and quota.endswith(" of 10.0 GiB.")
    browser.find_element(By.ID, "enabled").click()
    subject = browser.find_element(By.ID, "subject")
    subject.clear()
    subject.send_keys("On holiday")
    browser.find_element(By.ID, "body").send_keys("Back on the 14th.")
    submit(
        browser, browser.find_element(By.CSS_SELECTOR, "form[action='/account/vacation'] button")
    )
    assert flash(browser) == ["Auto-reply saved (on)."]
    assert browser.find_element(By.ID, "enabled").is_selected()
    assert browser.find_element(By.ID, "body").get_attribute("value") == "Back on the 14th."
    check_screenshot(browser, tmp_path / "account.png", "My account")
    browser.get(stack.url + "/admin")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not an administrator"
    browser.get(stack.url + "/account")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "nav button"))  # log out
    assert browser.current_url == stack.url + "/login"
    browser.get(stack.url + "/account")
    assert browser.current_url == stack.url + "/login"


def test_a_wrong_password_is_said_plainly(browser: WebDriver, stack: WebStack) -> None:
    log_in(browser, stack, USER, "not it")
    assert browser.current_url == stack.url + "/login"
    error = browser.find_element(By.ID, "login-error")
    assert error.text == "Wrong address or password."
    assert error.get_attribute("role") == "alert"
    assert browser.find_element(By.ID, "address").get_attribute("value") == USER


@pytest.mark.parametrize(
    ("who", "password", "path", "heading"),
    [
        (None, None, "/login", "Log in"),
        (USER, USER_PASSWORD, "/account", "My account"),
        (ADMIN, ADMIN_PASSWORD, "/admin", "Server status"),
    ],
)
def test_each_page_fits_a_phone(
    browser: WebDriver,
    stack: WebStack,
    tmp_path: Path,
    who: str | None,
    password: str | None,
    path: str,
    heading: str,
) -> None:
    if who is not None and password is not None:
        log_in(browser, stack, who, password)
    browser.set_window_size(*PHONE)
    browser.get(stack.url + path)
    width, _ = viewport(browser)
    assert width <= PHONE[0]
    # Nothing wider than the screen: no sideways scrolling (tables scroll inside their box).
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width
    image = check_screenshot(browser, tmp_path / f"phone{path.replace('/', '-')}.png", heading)
    assert image.width == width
    # Every form field has a label a screen reader announces.
    for field in browser.find_elements(By.CSS_SELECTOR, "input:not([type=hidden]), textarea"):
        if field.get_attribute("hidden") is not None:
            continue
        field_id = field.get_attribute("id")
        assert field_id, field.get_attribute("name")
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{field_id}']"), field_id
