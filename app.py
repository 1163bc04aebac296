"""The dashboard's entry point (`streamlit run app.py`): the page frame and the navigation.

The pages are declared here with `st.navigation` rather than found in `pages/` by file name, so
the sidebar says "Home" (not the entry file's name, "app") and groups the pages by what a user
does with them. Each page is still a plain script that only calls `core/`; the URLs stay the
ones the file names gave (`/Runs`, `/Grad-CAM`, ...), so links and bookmarks keep working.
"""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="cxr-transfer", page_icon="🫁", layout="wide")

navigation = st.navigation({
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
})
navigation.run()
