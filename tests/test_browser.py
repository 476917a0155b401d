"""The headless-browser helper itself, on small pages: it must see what a user's browser sees,
errors and failed loads included, or the report tests that use it prove nothing."""
import base64
import html
import struct
import zlib

import pytest

from tests.browser import browser_available, open_page

pytestmark = pytest.mark.skipif(
    not browser_available(),
    reason="needs Debian's chromium and chromedriver (apt-get install chromium chromium-driver) "
           "and selenium (pip install -e '.[test]'); .ci/run installs them")


def png(width: int, height: int) -> bytes:
    """A valid grey PNG: signature, IHDR, one IDAT of filter-0 rows, IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write(tmp_path, body: str, name: str = "page.html"):
    path = tmp_path / name
    path.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>t</title></head>'
                    f"<body>{body}</body></html>")
    return path


def test_a_clean_page_has_no_errors_and_no_failed_requests(tmp_path):
    page_path = write(tmp_path, '<h1 id="h">Report</h1><script>console.log("fine")</script>')
    with open_page(page_path) as page:
        assert page.console_errors == []
        assert page.failed_requests == []
        assert page.dialogs == []
        assert page.text("#h") == "Report"
        assert page.run("document.title") == "t"


def test_an_uncaught_exception_and_console_error_are_reported(tmp_path):
    page_path = write(tmp_path, '<script>console.error("said")</script><script>throw new Error("x")</script>')
    with open_page(page_path) as page:
        errors = page.console_errors
    assert any('"said"' in e for e in errors)
    assert any("Uncaught Error: x" in e for e in errors)


def test_a_missing_image_and_script_are_failed_requests(tmp_path):
    (tmp_path / "present.png").write_bytes(png(2, 2))
    page_path = write(tmp_path, '<img alt="gone" src="missing.png"><img alt="here" src="present.png">'
                                '<script src="missing.js"></script>')
    with open_page(page_path) as page:
        failed = page.failed_requests
        images = {img["alt"]: img for img in page.images()}
        errors = page.console_errors
    assert len(failed) == 2
    assert any(f.startswith((tmp_path / "missing.png").as_uri()) and "ERR_FILE_NOT_FOUND" in f for f in failed)
    assert any(f.startswith((tmp_path / "missing.js").as_uri()) for f in failed)
    assert images["gone"]["complete"] and images["gone"]["naturalWidth"] == 0 and not images["gone"]["decoded"]
    assert images["here"]["decoded"]
    assert errors == []  # a failed load is a failed request, not also a console error


def test_an_inline_base64_png_decodes_and_a_corrupt_one_does_not(tmp_path):
    good = base64.b64encode(png(3, 2)).decode()
    corrupt = base64.b64encode(png(3, 2)[:40]).decode()
    page_path = write(tmp_path, f'<img alt="good" src="data:image/png;base64,{good}">'
                                f'<img alt="corrupt" src="data:image/png;base64,{corrupt}">')
    with open_page(page_path) as page:
        images = {img["alt"]: img for img in page.images()}
    assert images["good"] == {"alt": "good", "complete": True, "naturalWidth": 3, "decoded": True}
    assert not images["corrupt"]["decoded"]


def test_a_select_filter_and_a_button_change_what_is_visible(tmp_path):
    rows = "".join(f'<tr class="row" data-reg="{reg}"><td>{reg}</td></tr>' for reg in ["none", "l2", "l2", "ewc"])
    page_path = write(tmp_path, f"""
        <select id="reg"><option value="">all</option><option value="l2">l2</option>
          <option value="ewc">ewc</option></select>
        <button id="reset">show all</button>
        <table>{rows}</table>
        <script>
          const reg = document.getElementById("reg");
          function show() {{
            for (const row of document.querySelectorAll(".row"))
              row.style.display = !reg.value || row.dataset.reg === reg.value ? "" : "none";
          }}
          reg.addEventListener("change", show);
          document.getElementById("reset").addEventListener("click", () => {{ reg.value = ""; show(); }});
        </script>""")
    with open_page(page_path) as page:
        assert page.visible_count(".row") == 4
        page.select("#reg", "l2")
        assert page.visible_count(".row") == 2
        page.select("#reg", "ewc")
        assert page.visible_count(".row") == 1
        page.click("#reset")
        assert page.visible_count(".row") == 4
        assert page.console_errors == []


def test_an_escaped_script_tag_shows_as_text_and_runs_nothing(tmp_path):
    name = "<script>alert(1)</script>"
    escaped = write(tmp_path, f'<table><tr><td class="task">{html.escape(name)}</td></tr></table>', "escaped.html")
    with open_page(escaped) as page:
        assert page.text("td.task") == name
        assert page.dialogs == []
        assert page.console_errors == []
    # the control: inserted raw, the same name runs, and the helper sees its dialog
    raw = write(tmp_path, f'<table><tr><td class="task">{name}</td></tr></table><p id="after">after</p>', "raw.html")
    with open_page(raw) as page:
        assert page.dialogs == ["alert: 1"]
        assert page.text("td.task") == ""
        assert page.text("#after") == "after"  # the page went on loading after the dialog
