"""The dashboard's navigation, and what every page script does first.

Not a page: Streamlit skips `__init__.py` in `pages/`.
"""

from __future__ import annotations

import streamlit as st


def navigation():
    """The pages as the sidebar lists them: Home, then grouped by what a user does with them.

    Declared with `st.navigation` rather than found in `pages/` by file name, so the sidebar says
    "Home" (not the entry file's name, "app"). URLs stay the ones the file names give (`/Runs`,
    `/Grad-CAM`, ...), so links, `st.switch_page` and bookmarks keep working. Every file in
    `pages/` but this one must be listed here (tests/test_app.py checks).
    """
    return st.navigation({
        "": [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)],
        "Build a model": [
            st.Page("pages/0_Data.py", title="Data", icon=":material/folder_open:"),
            st.Page("pages/1_Train.py", title="Train", icon=":material/model_training:"),
        ],
        "Results": [
            st.Page("pages/2_Runs.py", title="Runs", icon=":material/analytics:"),
            st.Page("pages/3_Compare.py", title="Compare", icon=":material/compare_arrows:"),
            st.Page("pages/4_Grad-CAM.py", title="Grad-CAM", icon=":material/radiology:"),
        ],
        "Use a model": [
            st.Page("pages/5_Predict.py", title="Predict", icon=":material/image_search:"),
            st.Page("pages/6_Export.py", title="Export", icon=":material/download:"),
        ],
        "Clinicians": [
            st.Page("pages/7_Review.py", title="Review", icon=":material/rule:"),
            st.Page("pages/8_Reader_study.py", title="Reader study", icon=":material/visibility:"),
        ],
    })


def page_setup(title: str) -> None:
    """The browser tab's title and the wide layout, with this app's sidebar.

    Streamlit decides once per server process whether an app uses the legacy `pages/` folder or
    `st.navigation`, and learns of the latter only when app.py has run in some session. Until then
    a deep link (a bookmark, or a tab reconnecting after a server restart) runs the page without
    app.py, under the legacy sidebar that lists "app" and "home". Declaring the navigation here
    switches the process over, and the rerun shows the page inside app.py. Only on a session's
    first run, when no click can be lost (Streamlit's AppTest starts every run in the legacy mode).
    The flag read is Streamlit's own (1.67, pinned); tests/test_browser.py opens a deep link first
    on a fresh server, so a change in Streamlit shows up there.
    """
    from streamlit.runtime.pages_manager import PagesManager

    first_run = "_page_setup_done" not in st.session_state
    st.session_state["_page_setup_done"] = True
    if first_run and PagesManager.uses_pages_directory:
        navigation()  # clears the flag, as app.py's call would have
        st.rerun()
    st.set_page_config(page_title=f"{title} · cxr-transfer", layout="wide")
