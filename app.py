"""The dashboard's entry point (`streamlit run app.py`): the page frame, then the page the URL asks for.

The pages and their sidebar (Home; Build a model; Results; Use a model) are declared in
`pages/__init__.py`, so that a page opened by a deep link can declare them too. Each page is a
plain script that only calls `core/`.
"""

from __future__ import annotations

import streamlit as st

from pages import navigation

st.set_page_config(page_title="cxr-transfer", page_icon="🫁", layout="wide")
navigation().run()
