"""The app's drawing canvas: streamlit-drawable-canvas without the component's own toolbar."""

# streamlit-drawable-canvas 0.13 draws its toolbar (send, undo, redo, edit, reset) as an invisible box
# over the top ~11% of the canvas's right half until the pointer has hovered there for 0.1 s (always, on a
# touch screen): a stroke that starts there goes to the toolbar and is lost. The app has its own Undo and
# Clear, and 0.13 has no option to leave the toolbar out (`disabled` hides it, but makes the canvas
# read-only), so the component is registered again under its own name, with its own script and its own
# stylesheet plus one rule that hides the toolbar. The component's shadow root is what the stylesheet
# styles: the app's page CSS cannot reach it.

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamlit_drawable_canvas import CanvasResult

COMPONENT = "streamlit-drawable-canvas.streamlit_drawable_canvas"  # the name the package registers
HTML = '<div class="canvas-root"></div>'  # the package's root element (its script mounts there)
NO_TOOLBAR = ".dc-toolbar { display: none !important; }"  # over the script's inline `display: flex`


@functools.cache
def canvas_css() -> str:
    """The component's stylesheet with the toolbar hidden (inline CSS: it holds a newline, so Streamlit
    does not take it for a file name)."""
    import streamlit_drawable_canvas

    build = Path(streamlit_drawable_canvas.__file__).parent / "frontend" / "build"
    [css] = sorted(build.glob("index-*.css"))  # one stylesheet, as the package's own glob requires
    return css.read_text(encoding="utf-8").rstrip() + "\n" + NO_TOOLBAR + "\n"


class _QuietOverwrite(logging.Filter):
    """Streamlit warns once when a definition replaces another of the same name: here that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args and record.args[0] == COMPONENT and "already registered" in str(record.msg))


def _register() -> None:
    import streamlit as st

    # the package's script stays served from its own asset folder (a path, cached by the browser)
    st.components.v2.component(COMPONENT, js="index-*.js", css=canvas_css(), html=HTML, isolate_styles=True)


@functools.cache
def _quiet() -> None:
    logging.getLogger("streamlit.components.v2.component_registry").addFilter(_QuietOverwrite())


def st_canvas(**kwargs: Any) -> CanvasResult:
    """`streamlit_drawable_canvas.st_canvas(**kwargs)` with no toolbar over the canvas."""
    import streamlit_drawable_canvas

    _quiet()
    _register()  # on this run's runtime (AppTest makes one per test), after the package's own registration
    return streamlit_drawable_canvas.st_canvas(**kwargs)
