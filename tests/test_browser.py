"""The notebooks as a reader meets them: JupyterLab in a real (headless) browser.

nbval and papermill run notebooks through a kernel alone, so they never see what the browser shows:
whether the ipywidgets controls render (the JupyterLab widget manager is installed and finds the
kernel's models) and whether a figure shown with ``display(fig, display_id=True)`` is redrawn in
place when a control changes (``update_display_data`` sent from a widget callback). These tests start
JupyterLab on localhost and drive Debian's Chromium (``/usr/bin/chromium``) with Playwright:

- ``test_widget_redraws_figure_in_browser`` (seconds, no training): a small notebook of our own,
  a Dropdown that redraws a matplotlib figure. It checks the browser/widget plumbing itself.
- ``test_notebook_07_in_browser``: ``07_masks_and_attention`` with only its parameters cell edited
  (profile ``smoke``, the session's smoke runs), run with Run All: no cell errors (in the saved file
  and on screen), and choosing another option in the explorer's first dropdown redraws its figure.
  A screenshot is kept in the test's ``tmp_path``.

Both skip when Chromium or the ``playwright`` wheel is missing; no browser is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
import pytest
from test_notebooks import _as_a_user_would, _parameters_cells, _read

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
RUN_TIMEOUT_MS = 300_000  # Run All of 07 in the smoke profile takes well under a minute
# Every cell rendered in the DOM (JupyterLab's default windowing may leave off-screen cells out).
SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
            "@jupyterlab/apputils-extension/notification.jupyterlab-settings": '{"fetchNews": "false"}'}


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM} (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "no playwright wheel (pip install playwright)"
    return None


# Checked before any fixture runs, so a missing browser does not first cost the smoke pipeline.
MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


@dataclass
class Lab:
    root: Path
    port: int
    token: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab on a free localhost port, token auth, serving a fresh temporary folder."""
    root, settings = tmp_path / "lab", tmp_path / "lab-settings"
    root.mkdir()
    for rel, text in SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(text)
    lab = Lab(root, _free_port(), os.urandom(16).hex())
    log = tmp_path / "jupyterlab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={lab.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={lab.token}",
             f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
             f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _answers(lab.url("api/status")):
            assert proc.poll() is None, f"JupyterLab exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"JupyterLab did not answer in 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.25)
        yield lab
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def page(lab: Lab) -> Iterator[Page]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)  # loading JupyterLab, saving
            yield page
        finally:
            browser.close()


def _run_all(page: Page, lab: Lab, name: str) -> None:
    """Open ``name`` in JupyterLab, Run All, wait until the kernel is done, save; no cell may fail."""
    page.goto(lab.url(f"lab/tree/{name}"))
    page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.content?.widgets?.length > 0")
    page.evaluate("""async () => {
        const panel = window.jupyterapp.shell.currentWidget;
        await panel.context.ready;
        await panel.sessionContext.ready;
        window.kdnbRunAll = 'running';
        window.jupyterapp.commands.execute('notebook:run-all-cells')
            .then(ok => { window.kdnbRunAll = ok === false ? 'stopped' : 'done'; },
                  err => { window.kdnbRunAll = 'failed: ' + err; });
    }""")
    page.wait_for_function(
        """() => window.kdnbRunAll !== 'running'
              && window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'
              && ![...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
                    .some(p => p.textContent.includes('[*]'))""",
        timeout=RUN_TIMEOUT_MS, polling=500)
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    saved = nbformat.read(lab.root / name, as_version=4)
    errors = [f"{o.ename}: {o.evalue}" for c in saved.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: cells raised {errors}"
    shown = page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]
        .map(o => o.innerText)
        .filter(t => t.includes('Traceback (most recent call last)') || t.includes('Error displaying widget'))""")
    assert not shown, f"{name}: error output on screen:\n" + "\n".join(t[-1500:] for t in shown)
    assert page.evaluate("() => window.kdnbRunAll") == "done", page.evaluate("() => window.kdnbRunAll")


# The first figure image in the output area of the dropdown's cell, else in the cells after it.
EXPLORER_IMG = """() => {
    const select = document.querySelector('.jp-Notebook .widget-dropdown select');
    const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
    const from = cells.indexOf(select.closest('.jp-Cell'));
    for (const cell of cells.slice(from)) {
        const img = cell.querySelector('.jp-OutputArea-output img');
        if (img) return img.src;
    }
    return null;
}"""


def _check_dropdown_redraws_figure(page: Page, screenshot: Path) -> None:
    """Choose another option in the first ipywidgets dropdown; its figure's image must change."""
    from playwright.sync_api import TimeoutError as WaitTimeout

    select = page.locator(".jp-Notebook .widget-dropdown select").first
    try:
        select.wait_for(state="attached", timeout=30_000)
    except WaitTimeout:
        pytest.fail("no ipywidgets dropdown (`.widget-dropdown select`) rendered within 30 s after Run All")
    select.scroll_into_view_if_needed()
    before = page.evaluate(EXPLORER_IMG)
    assert before, "no figure image in or after the dropdown's cell"
    options = select.evaluate("s => s.options.length")
    assert options > 1, "the dropdown offers a single option: nothing to switch to"
    choice = (select.evaluate("s => s.selectedIndex") + 1) % options
    select.select_option(index=choice)
    try:
        page.wait_for_function(f"before => ({EXPLORER_IMG})() !== before", arg=before, timeout=120_000)
    except WaitTimeout:
        pass  # reported by the assertion below, after the screenshot
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"\nscreenshot: {screenshot}")
    changed = page.evaluate(EXPLORER_IMG) != before
    assert changed, (
        f"the figure did not change within 120 s of choosing option {choice} in the dropdown (see {screenshot})")


DEMO = '''\
import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display


def draw(n):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(range(n))
    ax.set_title(f"n = {n}")
    plt.close(fig)
    return fig


image = widgets.Dropdown(options=[2, 5, 9], description="image")
display(widgets.HBox([image]))
handle = display(draw(image.value), display_id=True)
image.observe(lambda change: handle.update(draw(change["new"])), names="value")
'''


def test_widget_redraws_figure_in_browser(lab: Lab, page: Page, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(DEMO)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, lab.root / "widget_demo.ipynb")
    _run_all(page, lab, "widget_demo.ipynb")
    _check_dropdown_redraws_figure(page, tmp_path / "jupyterlab_widget_demo.png")


def test_notebook_07_in_browser(smoke_pipeline, lab: Lab, page: Page, tmp_path: Path) -> None:
    name = "07_masks_and_attention"
    nb = _read(name)
    (cell,) = _parameters_cells(nb)
    cell.source = _as_a_user_would(cell.source, {"profile": "smoke", "runs_dir": str(smoke_pipeline.runs_dir)})
    nbformat.write(nb, lab.root / f"{name}.ipynb")
    _run_all(page, lab, f"{name}.ipynb")
    _check_dropdown_redraws_figure(page, tmp_path / "jupyterlab_07.png")
